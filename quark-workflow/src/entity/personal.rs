//! Personal data in entity events and states: sealed with its subject's key when stored, and
//! gone for good when the subject is erased (crypto-shredding).
//!
//! Mark a field `Personal<T>`. When an event or a snapshot is stored, each personal field is
//! sealed (ChaCha20-Poly1305) with the data key of the entity's subject ([`Entity::subject`]),
//! and only the ciphertext is written: the hash chain covers the ciphertext. When it is read, the
//! field is opened again, or, once the subject is erased ([`Entities::erase_subject`]), reads as
//! [`Personal::Redacted`]. Entities still load, projections still rebuild, `quark verify` still
//! passes: only the personal values are gone.
//!
//! [`Entities::erase_subject`]: super::Entities::erase_subject

use std::collections::{BTreeMap, BTreeSet};

use quark_history::{CodecTag, EventLog, Payload, SubjectKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::Entity;

const PERSONAL: &str = "$personal";
const REDACTED: &str = "$redacted";
const SEALED: &str = "$sealed";

/// A value about a person: sealed with its subject's key in the journal, [`Redacted`] once the
/// subject is erased.
///
/// [`Redacted`]: Personal::Redacted
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Personal<T> {
    /// The value.
    Known(T),
    /// The subject was erased: the value cannot be read any more.
    Redacted,
}

impl<T> Personal<T> {
    /// The value, unless redacted.
    pub fn known(&self) -> Option<&T> {
        match self {
            Personal::Known(v) => Some(v),
            Personal::Redacted => None,
        }
    }

    /// Whether the value was erased.
    pub fn is_redacted(&self) -> bool {
        matches!(self, Personal::Redacted)
    }
}

impl<T> From<T> for Personal<T> {
    fn from(value: T) -> Self {
        Personal::Known(value)
    }
}

#[derive(Serialize, Deserialize)]
enum Repr<T> {
    #[serde(rename = "$personal")]
    Known(T),
    #[serde(rename = "$redacted")]
    Redacted(bool),
}

impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Personal::Known(v) => Repr::Known(v).serialize(s),
            Personal::Redacted => Repr::<&T>::Redacted(true).serialize(s),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Repr::<T>::deserialize(d)? {
            Repr::Known(v) => Personal::Known(v),
            Repr::Redacted(_) => Personal::Redacted,
        })
    }
}

/// The one key of a single-key JSON object, and its value.
fn single<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    match v {
        Value::Object(map) if map.len() == 1 => map.get(key),
        _ => None,
    }
}

fn children(v: &mut Value) -> Box<dyn Iterator<Item = &mut Value> + '_> {
    match v {
        Value::Object(map) => Box::new(map.values_mut()),
        Value::Array(items) => Box::new(items.iter_mut()),
        _ => Box::new(std::iter::empty()),
    }
}

fn has(v: &Value, key: &str) -> bool {
    if single(v, key).is_some() {
        return true;
    }
    match v {
        Value::Object(map) => map.values().any(|c| has(c, key)),
        Value::Array(items) => items.iter().any(|c| has(c, key)),
        _ => false,
    }
}

/// Seals every personal field of `v` for `subject`: `{"$sealed": {"subject", "data": hex}}`.
fn seal(v: &mut Value, subject: &str, key: &SubjectKey) -> Result<(), quark_history::Error> {
    if let Some(plain) = single(v, PERSONAL) {
        *v = match key {
            SubjectKey::Key(key) => {
                let plain = serde_json::to_vec(plain)
                    .map_err(|e| quark_history::Error::Invalid(format!("personal field: {e}")))?;
                let sealed = key.seal(subject, &plain)?;
                serde_json::json!({ SEALED: { "subject": subject, "data": hex(&sealed) } })
            }
            // An erased subject's new personal data is not stored at all.
            _ => serde_json::json!({ REDACTED: true }),
        };
        return Ok(());
    }
    for child in children(v) {
        seal(child, subject, key)?;
    }
    Ok(())
}

fn sealed_subjects(v: &Value, out: &mut BTreeSet<String>) {
    if let Some(s) = single(v, SEALED) {
        if let Some(subject) = s.get("subject").and_then(Value::as_str) {
            out.insert(subject.to_string());
        }
        return;
    }
    match v {
        Value::Object(map) => map.values().for_each(|c| sealed_subjects(c, out)),
        Value::Array(items) => items.iter().for_each(|c| sealed_subjects(c, out)),
        _ => {}
    }
}

/// Opens every sealed field of `v`; a field of an erased subject becomes redacted. Returns how
/// many were redacted.
fn open(v: &mut Value, keys: &BTreeMap<String, SubjectKey>) -> Result<u32, quark_history::Error> {
    if let Some(s) = single(v, SEALED) {
        let subject = s.get("subject").and_then(Value::as_str).unwrap_or_default();
        let data = s.get("data").and_then(Value::as_str).unwrap_or_default();
        return match keys.get(subject) {
            Some(SubjectKey::Key(key)) => {
                let plain = key.open(subject, &unhex(data)?)?;
                let value: Value = serde_json::from_slice(&plain).map_err(|e| {
                    quark_history::Error::Invalid(format!("opened personal field: {e}"))
                })?;
                *v = serde_json::json!({ PERSONAL: value });
                Ok(0)
            }
            _ => {
                *v = serde_json::json!({ REDACTED: true });
                Ok(1)
            }
        };
    }
    let mut redacted = 0;
    for child in children(v) {
        redacted += open(child, keys)?;
    }
    Ok(redacted)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex(s: &str) -> Result<Vec<u8>, quark_history::Error> {
    let bad = || quark_history::Error::Invalid("a sealed field is not hex".into());
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

/// `value` (an event or a state of entity `E`'s `key`) as stored: encoded with the store's codec,
/// or, if it holds personal fields, as JSON with each one sealed for the entity's subject.
pub(crate) async fn encode<E: Entity, T: Serialize>(
    store: &dyn EventLog,
    key: &str,
    value: &T,
) -> Result<Payload, quark_history::Error> {
    Ok(encode_sealed::<E, T>(store, key, value).await?.0)
}

/// [`encode`], and whether a personal field was left out because its subject is erased (the
/// stored value then differs from `value`).
pub(crate) async fn encode_sealed<E: Entity, T: Serialize>(
    store: &dyn EventLog,
    key: &str,
    value: &T,
) -> Result<(Payload, bool), quark_history::Error> {
    let mut v = serde_json::to_value(value)
        .map_err(|e| quark_history::Error::Invalid(format!("encode: {e}")))?;
    if !has(&v, PERSONAL) {
        let payload = Payload::encode(store.log_config().codec, value)
            .map_err(quark_history::Error::Encode)?;
        return Ok((payload, false));
    }
    let subject = E::subject(key);
    let keys = store
        .subject_keys(std::slice::from_ref(&subject), true)
        .await?;
    let key = keys.get(&subject).cloned().unwrap_or(SubjectKey::Erased);
    seal(&mut v, &subject, &key)?;
    let redacted = !matches!(key, SubjectKey::Key(_));
    Ok((
        Payload::json(&v).map_err(quark_history::Error::Encode)?,
        redacted,
    ))
}

/// Opens the sealed personal fields of stored payloads in place, with one read of the keys for
/// all of them. Payloads without any are left untouched (and cost no parse).
pub(crate) async fn open_all(
    store: &dyn EventLog,
    payloads: &mut [&mut Payload],
) -> Result<(), quark_history::Error> {
    let marker = SEALED.as_bytes();
    let mut parsed: Vec<(usize, Value)> = Vec::new();
    let mut subjects = BTreeSet::new();
    for (i, p) in payloads.iter().enumerate() {
        if p.codec() != CodecTag::Json || !p.as_bytes().windows(marker.len()).any(|w| w == marker) {
            continue;
        }
        let v: Value = serde_json::from_slice(p.as_bytes())
            .map_err(|e| quark_history::Error::Invalid(format!("stored payload: {e}")))?;
        sealed_subjects(&v, &mut subjects);
        parsed.push((i, v));
    }
    if parsed.is_empty() {
        return Ok(());
    }
    let subjects: Vec<String> = subjects.into_iter().collect();
    let keys = store.subject_keys(&subjects, false).await?;
    for (i, mut v) in parsed {
        let redacted = open(&mut v, &keys)?;
        if redacted > 0 {
            tracing::debug!(
                redacted,
                "personal fields of erased subjects read as redacted"
            );
        }
        *payloads[i] = Payload::json(&v).map_err(quark_history::Error::Encode)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Signup {
        plan: String,
        email: Personal<String>,
        phones: Vec<Personal<String>>,
    }

    #[test]
    fn a_personal_field_round_trips_tagged_and_reads_redacted() {
        let s = Signup {
            plan: "pro".into(),
            email: "a@example.com".to_string().into(),
            phones: vec![Personal::Redacted],
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"plan": "pro", "email": {"$personal": "a@example.com"},
                "phones": [{"$redacted": true}]})
        );
        assert!(has(&v, PERSONAL));
        assert_eq!(serde_json::from_value::<Signup>(v).unwrap(), s);
    }
}
