//! Signed checkpoints over the global order: proof, to someone who does not trust the database,
//! that history was not rewritten.
//!
//! Each instance's hash chain catches an event changed, removed or added behind the engine's back,
//! but not a coordinated rewrite: events changed together with their hashes and the instance's
//! recorded head form a valid chain again. A checkpoint fixes a range of the global commit order
//! ([`Store::read_all`]) under a Merkle root, signed with an Ed25519 key the operator holds and
//! keeps away from the database. Checking it later recomputes the root from the events the store
//! holds now: any event of the range changed, removed, added or reordered since changes the root,
//! and the chunk roots narrow it down to [`CHUNK`] events.
//!
//! The tree: a leaf per event, `blake3(0x00 || instance id length (8 bytes, big-endian) || instance
//! id || seq (8 bytes, big-endian) || recorded at (microseconds, 8 bytes, big-endian) ||
//! blake3(the event as JSON) || the event's chain hash in hex)`: its place, its time, its content
//! as the store decodes it now, and its link, so that changing any of them (its content without its
//! hash included) changes the root; an inner node `blake3(0x01 || left || right)`, an odd last node
//! carried up as it is. Events are taken in chunks of [`CHUNK`]; the
//! root is the tree over the chunks' roots. The signature covers [`Checkpoint::signed_bytes`].

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::journal::{GlobalPosition, from_hex, to_hex};
use crate::store::Store;

/// How many events one chunk root covers.
pub const CHUNK: usize = 4096;

/// The events read from the store at a time.
const PAGE: u32 = 1000;

/// The format this module writes and reads.
const FORMAT: u32 = 1;

/// A signed Merkle root over a range of the global order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The format version (1).
    pub format: u32,
    /// The range starts after this position.
    pub after: GlobalPosition,
    /// The position of the range's last event (`after` for an empty range).
    pub until: GlobalPosition,
    /// How many events the range holds.
    pub events: u64,
    /// The Merkle root over the chunk roots, hex.
    pub root: String,
    /// The root of each chunk of [`CHUNK`] events, in order, hex.
    pub chunks: Vec<String>,
    /// When it was made (by the store's clock).
    pub created_at: Timestamp,
    /// The Ed25519 public key that signed it, hex.
    pub public_key: String,
    /// The Ed25519 signature over [`Checkpoint::signed_bytes`], hex.
    pub signature: String,
}

impl Checkpoint {
    /// The bytes the signature covers: a domain tag, the format, the range, the count, the root,
    /// the chunk roots and the creation time.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut b = b"quark-checkpoint".to_vec();
        b.extend(self.format.to_be_bytes());
        for p in [self.after, self.until] {
            b.extend(p.tx.to_be_bytes());
            b.extend(p.position.to_be_bytes());
        }
        b.extend(self.events.to_be_bytes());
        b.extend(self.root.as_bytes());
        b.extend((self.chunks.len() as u64).to_be_bytes());
        for c in &self.chunks {
            b.extend(c.as_bytes());
        }
        b.extend(self.created_at.as_micros().to_be_bytes());
        b
    }
}

/// An Ed25519 signing key (PKCS#8), as [`generate_key`] makes it.
pub struct SigningKey(Ed25519KeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public_key_hex())
    }
}

impl SigningKey {
    /// Reads a PKCS#8 document.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self> {
        Ed25519KeyPair::from_pkcs8(bytes)
            .map(SigningKey)
            .map_err(|e| Error::Invalid(format!("not an Ed25519 PKCS#8 key: {e}")))
    }

    /// The public key, hex: what a checker trusts.
    pub fn public_key_hex(&self) -> String {
        to_hex(self.0.public_key().as_ref())
    }
}

/// A new Ed25519 key as a PKCS#8 document: keep it secret, and away from the database it signs.
pub fn generate_key() -> Result<Vec<u8>> {
    Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|e| Error::Invalid(format!("generating a key: {e}")))
}

/// The Merkle root of `nodes`; the root of no node is `blake3(0x02)`.
fn merkle_root(mut nodes: Vec<[u8; 32]>) -> [u8; 32] {
    if nodes.is_empty() {
        return *blake3::hash(&[2]).as_bytes();
    }
    while nodes.len() > 1 {
        nodes = nodes
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => {
                    let mut h = blake3::Hasher::new();
                    h.update(&[1]);
                    h.update(l);
                    h.update(r);
                    *h.finalize().as_bytes()
                }
                [one] => *one,
                _ => unreachable!("chunks of two"),
            })
            .collect();
    }
    nodes[0]
}

fn leaf(event: &RecordedEvent) -> Result<[u8; 32]> {
    let content =
        serde_json::to_vec(&event.event).map_err(|e| Error::Encode(crate::CodecError::Json(e)))?;
    Ok(leaf_of(
        &event.instance_id,
        event.seq,
        event.recorded_at.as_micros(),
        blake3::hash(&content).as_bytes(),
        &event.hash,
    ))
}

fn leaf_of(instance_id: &str, seq: u64, at: i64, content: &[u8; 32], hash_hex: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&[0]);
    h.update(&(instance_id.len() as u64).to_be_bytes());
    h.update(instance_id.as_bytes());
    h.update(&seq.to_be_bytes());
    h.update(&at.to_be_bytes());
    h.update(content);
    h.update(hash_hex.as_bytes());
    *h.finalize().as_bytes()
}

/// The roots of a range, as read from the store now.
struct Range {
    until: GlobalPosition,
    events: u64,
    chunks: Vec<[u8; 32]>,
    /// The position of each chunk's first event.
    starts: Vec<GlobalPosition>,
}

/// Reads the range after `after` up to and including `until` (or every final event) and hashes
/// it, calling `progress` with the number of events read so far.
async fn hash_range(
    store: &dyn Store,
    after: GlobalPosition,
    until: Option<GlobalPosition>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Range> {
    let mut range = Range {
        until: after,
        events: 0,
        chunks: Vec::new(),
        starts: Vec::new(),
    };
    let mut leaves = Vec::with_capacity(CHUNK);
    crate::journal::scan_range(store, after, until, PAGE, |e| -> Result<()> {
        if leaves.is_empty() {
            range.starts.push(e.position);
        }
        leaves.push(leaf(&e.event)?);
        range.until = e.position;
        range.events += 1;
        if leaves.len() == CHUNK {
            range.chunks.push(merkle_root(std::mem::take(&mut leaves)));
        }
        if range.events.is_multiple_of(u64::from(PAGE)) {
            progress(range.events);
        }
        Ok(())
    })
    .await?;
    progress(range.events);
    if !leaves.is_empty() {
        range.chunks.push(merkle_root(leaves));
    }
    Ok(range)
}

/// Makes a checkpoint of the events after `after` up to and including `until` (`None`: every event
/// final now), signed with `key`.
pub async fn create(
    store: &dyn Store,
    key: &SigningKey,
    after: GlobalPosition,
    until: Option<GlobalPosition>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Checkpoint> {
    let range = hash_range(store, after, until, progress).await?;
    let mut checkpoint = Checkpoint {
        format: FORMAT,
        after,
        until: range.until,
        events: range.events,
        root: to_hex(&merkle_root(range.chunks.clone())),
        chunks: range.chunks.iter().map(|c| to_hex(c)).collect(),
        created_at: store.config().clock.now(),
        public_key: key.public_key_hex(),
        signature: String::new(),
    };
    checkpoint.signature = to_hex(key.0.sign(&checkpoint.signed_bytes()).as_ref());
    Ok(checkpoint)
}

/// What checking a checkpoint found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CheckpointCheck {
    /// The signature is the trusted key's, and the store holds exactly the events it covers.
    Holds {
        /// How many events.
        events: u64,
    },
    /// The signature does not verify with the trusted key: the checkpoint itself was changed, or
    /// signed by another key.
    BadSignature,
    /// The store's events differ from the ones the checkpoint covers.
    Differs {
        /// How many events the range holds now.
        events_now: u64,
        /// How many it held.
        events_then: u64,
        /// The first chunk whose root differs (0-based).
        first_chunk: u64,
        /// The position of that chunk's first event now, if the range still has that chunk.
        chunk_starts_at: Option<GlobalPosition>,
    },
}

/// Checks `checkpoint` against the store's events now. `trusted_key` is the public key (hex) the
/// checker trusts; without it the key in the checkpoint is used, which proves only that the file
/// is consistent, not who made it.
pub async fn check(
    store: &dyn Store,
    checkpoint: &Checkpoint,
    trusted_key: Option<&str>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<CheckpointCheck> {
    if checkpoint.format != FORMAT {
        return Err(Error::Invalid(format!(
            "checkpoint format {} is not supported (this build reads {FORMAT})",
            checkpoint.format
        )));
    }
    let is_root = |r: &String| {
        r.len() == 64
            && r.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if !is_root(&checkpoint.root) || !checkpoint.chunks.iter().all(is_root) {
        return Err(Error::Invalid(
            "a checkpoint's root and chunk roots are 64 lowercase hex digits each".into(),
        ));
    }
    let key = from_hex(trusted_key.unwrap_or(&checkpoint.public_key))?;
    let signature = from_hex(&checkpoint.signature)?;
    if UnparsedPublicKey::new(&ED25519, key)
        .verify(&checkpoint.signed_bytes(), &signature)
        .is_err()
    {
        return Ok(CheckpointCheck::BadSignature);
    }
    let range = hash_range(store, checkpoint.after, Some(checkpoint.until), progress).await?;
    let now: Vec<String> = range.chunks.iter().map(|c| to_hex(c)).collect();
    if range.events == checkpoint.events && to_hex(&merkle_root(range.chunks)) == checkpoint.root {
        return Ok(CheckpointCheck::Holds {
            events: range.events,
        });
    }
    let first_chunk = now
        .iter()
        .zip(&checkpoint.chunks)
        .position(|(a, b)| a != b)
        .unwrap_or(now.len().min(checkpoint.chunks.len()));
    Ok(CheckpointCheck::Differs {
        events_now: range.events,
        events_then: checkpoint.events,
        first_chunk: first_chunk as u64,
        chunk_starts_at: range.starts.get(first_chunk).copied(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_depends_on_every_leaf_and_its_place() {
        let leaf = |id: &str, seq: u64, hash: &str| leaf_of(id, seq, 7, &[1; 32], hash);
        let leaves: Vec<[u8; 32]> = (0..5u64).map(|n| leaf("i", n, "ab")).collect();
        let root = merkle_root(leaves.clone());
        assert_ne!(
            leaf_of("i", 1, 7, &[2; 32], "ab"),
            leaf("i", 1, "ab"),
            "content"
        );
        assert_ne!(
            leaf_of("i", 1, 8, &[1; 32], "ab"),
            leaf("i", 1, "ab"),
            "time"
        );
        for i in 0..leaves.len() {
            let mut changed = leaves.clone();
            changed[i] = leaf("i", 99, "ab");
            assert_ne!(merkle_root(changed), root, "leaf {i}");
        }
        let mut swapped = leaves.clone();
        swapped.swap(1, 2);
        assert_ne!(merkle_root(swapped), root);
        assert_ne!(merkle_root(leaves[..4].to_vec()), root, "one removed");
        assert_ne!(merkle_root(Vec::new()), merkle_root(vec![[0; 32]]));
        // The instance id's length is hashed: ("ab", ...) and ("a", "b...") cannot collide.
        assert_ne!(leaf("ab", 1, "cd"), leaf("a", 1, "bcd"));
    }
}
