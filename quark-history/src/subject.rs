//! Data keys of the people whose personal data the journal holds, for crypto-shredding.
//!
//! Each subject (a customer, a user) has a random 256-bit data key; personal fields of entity
//! events and snapshots are sealed with it (ChaCha20-Poly1305), and the journal keeps only the
//! ciphertext, so the hash chain covers the ciphertext. The data key itself is stored wrapped
//! (sealed with the operator's master key, [`MasterKey`], which is never stored): a copy of the
//! database alone opens nothing. Erasing a subject deletes its data key and leaves a tombstone:
//! its sealed fields can never be opened again, by anyone, while every event, snapshot and hash
//! stays in place.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

/// The operator's key-encryption key: it wraps every subject's data key. Keep it out of the
/// database (an environment variable, a secret store); without it the data keys cannot be
/// opened, so keep it safe as well.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A master key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    /// A master key from 64 hex digits (as `QUARK_MASTER_KEY` holds it).
    pub fn from_hex(hex: &str) -> Result<Self> {
        let bytes = crate::journal::from_hex(hex.trim())?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Invalid("a master key is 32 bytes: 64 hex digits".to_string()))?;
        Ok(MasterKey(bytes))
    }

    /// A fresh random master key, as 64 hex digits.
    pub fn generate_hex() -> Result<String> {
        Ok(crate::journal::to_hex(&random::<32>()?))
    }
}

/// A subject's data key, opened.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// Seals `plain` for `subject`: `nonce || ciphertext and tag`.
    pub fn seal(&self, subject: &str, plain: &[u8]) -> Result<Vec<u8>> {
        seal(&self.0, subject, plain)
    }

    /// Opens what [`seal`](Self::seal) sealed for `subject`; a changed byte or another subject
    /// is refused.
    pub fn open(&self, subject: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        open(&self.0, subject, sealed)
    }
}

/// What the store knows of a subject's key.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SubjectKey {
    /// Its data key.
    Key(DataKey),
    /// It was erased: its sealed fields cannot be opened.
    Erased,
}

/// Subjects' data keys. A capability of every [`Store`](crate::Store); sealed.
pub trait SubjectStore: Send + Sync {
    /// The keys of `subjects`. A subject without a key gets a fresh one when `create` holds, and
    /// is left out otherwise; an erased subject is never given a key again. Fails with
    /// [`Error::Invalid`] if the store has no [`MasterKey`]
    /// ([`StoreConfig::master_key`](crate::StoreConfig::master_key)).
    fn subject_keys<'a>(
        &'a self,
        subjects: &'a [String],
        create: bool,
    ) -> BoxFuture<'a, Result<BTreeMap<String, SubjectKey>>>;

    /// Erases a subject: deletes its data key and records when. Returns `false` if it had none
    /// (never seen, or erased already). Needs no master key.
    fn erase_subject<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<bool>>;
}

/// The master key of `config`, or the error that says how to set one.
pub(crate) fn master_key(config: &crate::StoreConfig) -> Result<&MasterKey> {
    config.master_key.as_ref().ok_or_else(|| {
        Error::Invalid(
            "personal data is sealed with subject keys, which need a master key: set \
             StoreConfig::master_key (QUARK_MASTER_KEY for the quark binary)"
                .into(),
        )
    })
}

pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Invalid("the system's random source failed".into()))?;
    Ok(bytes)
}

fn cipher(key: &[u8; 32]) -> Result<LessSafeKey> {
    let key = UnboundKey::new(&CHACHA20_POLY1305, key)
        .map_err(|_| Error::Invalid("not a ChaCha20-Poly1305 key".into()))?;
    Ok(LessSafeKey::new(key))
}

fn seal(key: &[u8; 32], aad: &str, plain: &[u8]) -> Result<Vec<u8>> {
    let nonce = random::<NONCE_LEN>()?;
    let mut out = plain.to_vec();
    cipher(key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut out,
        )
        .map_err(|_| Error::Invalid("sealing failed".into()))?;
    let mut sealed = nonce.to_vec();
    sealed.extend(out);
    Ok(sealed)
}

fn open(key: &[u8; 32], aad: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let bad = || Error::Invalid(format!("sealed data of `{aad}` does not open with its key"));
    if sealed.len() < NONCE_LEN {
        return Err(bad());
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
    let mut buf = rest.to_vec();
    let plain = cipher(key)?
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
        .map_err(|_| bad())?;
    Ok(plain.to_vec())
}

/// A fresh data key, and the same wrapped with `master` for storage.
pub(crate) fn new_data_key(master: &MasterKey, subject: &str) -> Result<(DataKey, Vec<u8>)> {
    let key = random::<32>()?;
    let wrapped = seal(&master.0, subject, &key)?;
    Ok((DataKey(key), wrapped))
}

/// A stored data key, unwrapped with `master`.
pub(crate) fn unwrap_data_key(
    master: &MasterKey,
    subject: &str,
    wrapped: &[u8],
) -> Result<DataKey> {
    let key = open(&master.0, subject, wrapped).map_err(|_| {
        Error::Invalid(format!(
            "the data key of subject `{subject}` does not open with this master key: is it the one \
             the keys were made with?"
        ))
    })?;
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| Error::Invalid(format!("the data key of `{subject}` is not 32 bytes")))?;
    Ok(DataKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_and_subject_only() {
        let master = MasterKey::from_hex(&MasterKey::generate_hex().unwrap()).unwrap();
        let (key, wrapped) = new_data_key(&master, "alice").unwrap();
        let sealed = key.seal("alice", b"alice@example.com").unwrap();
        assert_eq!(key.open("alice", &sealed).unwrap(), b"alice@example.com");
        assert!(key.open("bob", &sealed).is_err());
        let mut changed = sealed.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(key.open("alice", &changed).is_err());
        // The stored key opens with the master key, for its subject only.
        let again = unwrap_data_key(&master, "alice", &wrapped).unwrap();
        assert_eq!(again.open("alice", &sealed).unwrap(), b"alice@example.com");
        assert!(unwrap_data_key(&master, "bob", &wrapped).is_err());
        let other = MasterKey::from_bytes([7; 32]);
        assert!(unwrap_data_key(&other, "alice", &wrapped).is_err());
    }

    #[test]
    fn a_master_key_is_64_hex_digits() {
        assert!(MasterKey::from_hex("abcd").is_err());
        assert!(MasterKey::from_hex(&"0".repeat(64)).is_ok());
    }
}
