//! Codecs: how events and user payloads become bytes.
//!
//! JSON is the default: a stored event can be read with SQL, by the CLI and in replay files.
//! [`Postcard`] is the compact binary codec. Every stored row carries its [`CodecTag`], so a
//! database may hold both and a store can switch codecs without rewriting old rows.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The JSON codec failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The postcard codec failed.
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
    /// A row names a codec this build does not know.
    #[error("unknown codec tag {0}")]
    UnknownTag(i16),
}

/// A serialization format. Implemented by [`Json`] and [`Postcard`]; stores pick one by [`CodecTag`].
pub trait Codec {
    /// The tag stored beside bytes written with this codec.
    const TAG: CodecTag;
    /// Encodes a value.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError>;
    /// Decodes a value.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError>;
}

/// The JSON codec (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const TAG: CodecTag = CodecTag::Json;
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
        Ok(serde_json::to_vec(value)?)
    }
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// The compact binary codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Codec for Postcard {
    const TAG: CodecTag = CodecTag::Postcard;
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
        Ok(postcard::to_stdvec(value)?)
    }
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}

/// Names a codec in stored rows (`codec SMALLINT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CodecTag {
    /// [`Json`].
    #[default]
    Json,
    /// [`Postcard`].
    Postcard,
}

impl CodecTag {
    /// The value stored in `codec` columns.
    pub fn as_i16(self) -> i16 {
        match self {
            CodecTag::Json => 1,
            CodecTag::Postcard => 2,
        }
    }

    /// The tag for a stored `codec` value.
    pub fn from_i16(tag: i16) -> Result<Self, CodecError> {
        match tag {
            1 => Ok(CodecTag::Json),
            2 => Ok(CodecTag::Postcard),
            other => Err(CodecError::UnknownTag(other)),
        }
    }

    /// Encodes with this tag's codec.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        match self {
            CodecTag::Json => Json::encode(value),
            CodecTag::Postcard => Postcard::encode(value),
        }
    }

    /// Decodes with this tag's codec.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            CodecTag::Json => Json::decode(bytes),
            CodecTag::Postcard => Postcard::decode(bytes),
        }
    }
}

/// An opaque user value (an input, an output, a signal): bytes in a known codec.
///
/// In a JSON-encoded event a JSON payload is embedded as JSON (`{"json": {...}}`), so that
/// histories stay readable; in a binary event it is a byte string. Embedding normalizes the JSON
/// (object keys sorted, whitespace dropped); the value is the same.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Payload {
    codec: CodecTag,
    bytes: Vec<u8>,
}

impl Payload {
    /// A payload from raw bytes written with `codec`.
    pub fn from_bytes(codec: CodecTag, bytes: Vec<u8>) -> Self {
        Payload { codec, bytes }
    }

    /// Encodes `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, CodecError> {
        Ok(Payload {
            codec: CodecTag::Json,
            bytes: Json::encode(value)?,
        })
    }

    /// Encodes `value` with `codec`.
    pub fn encode<T: Serialize + ?Sized>(codec: CodecTag, value: &T) -> Result<Self, CodecError> {
        Ok(Payload {
            codec,
            bytes: codec.encode(value)?,
        })
    }

    /// The empty JSON payload, `null`.
    pub fn unit() -> Self {
        Payload {
            codec: CodecTag::Json,
            bytes: b"null".to_vec(),
        }
    }

    /// Decodes the payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CodecError> {
        self.codec.decode(&self.bytes)
    }

    /// The codec the bytes are written in.
    pub fn codec(&self) -> CodecTag {
        self.codec
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.codec, std::str::from_utf8(&self.bytes)) {
            (CodecTag::Json, Ok(text)) if text.len() <= 256 => write!(f, "Payload({text})"),
            _ => write!(f, "Payload({:?}, {} bytes)", self.codec, self.bytes.len()),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ReadablePayload {
    Json(serde_json::Value),
    Postcard(Vec<u8>),
}

#[derive(Serialize, Deserialize)]
enum BinaryPayload<'a> {
    Json(#[serde(borrow)] &'a [u8]),
    Postcard(&'a [u8]),
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            let repr = match self.codec {
                CodecTag::Json => ReadablePayload::Json(
                    serde_json::from_slice(&self.bytes).map_err(serde::ser::Error::custom)?,
                ),
                CodecTag::Postcard => ReadablePayload::Postcard(self.bytes.clone()),
            };
            repr.serialize(serializer)
        } else {
            match self.codec {
                CodecTag::Json => BinaryPayload::Json(&self.bytes),
                CodecTag::Postcard => BinaryPayload::Postcard(&self.bytes),
            }
            .serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            Ok(match ReadablePayload::deserialize(deserializer)? {
                ReadablePayload::Json(value) => Payload {
                    codec: CodecTag::Json,
                    bytes: serde_json::to_vec(&value).map_err(serde::de::Error::custom)?,
                },
                ReadablePayload::Postcard(bytes) => Payload {
                    codec: CodecTag::Postcard,
                    bytes,
                },
            })
        } else {
            // Owned bytes: postcard hands out borrowed slices, other formats may not.
            #[derive(Deserialize)]
            enum Owned {
                Json(Vec<u8>),
                Postcard(Vec<u8>),
            }
            Ok(match Owned::deserialize(deserializer)? {
                Owned::Json(bytes) => Payload {
                    codec: CodecTag::Json,
                    bytes,
                },
                Owned::Postcard(bytes) => Payload {
                    codec: CodecTag::Postcard,
                    bytes,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_payload_is_embedded_as_json_in_json_events() {
        let p = Payload::json(&serde_json::json!({"b": 1, "a": [true]})).unwrap();
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"json":{"a":[true],"b":1}}"#);
        let back: Payload = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back.decode::<serde_json::Value>().unwrap(),
            p.decode::<serde_json::Value>().unwrap()
        );
    }

    #[test]
    fn payloads_round_trip_through_postcard_byte_for_byte() {
        let p = Payload::encode(CodecTag::Postcard, &(7u32, "seven")).unwrap();
        let bytes = postcard::to_stdvec(&p).unwrap();
        let back: Payload = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            back.decode::<(u32, String)>().unwrap(),
            (7, "seven".to_string())
        );
    }

    #[test]
    fn an_unknown_codec_tag_is_an_error() {
        assert!(matches!(
            CodecTag::from_i16(9),
            Err(CodecError::UnknownTag(9))
        ));
    }
}
