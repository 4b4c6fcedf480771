//! Encoding and decoding of stored rows, shared by both backends.
