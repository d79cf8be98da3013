//! Snapshot records and the snapshot graph (the VST): records keyed by id, plus index
//! keys for children-by-parent and snapshots-by-root (transpositions).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::ids::SnapshotId;
use crate::store::{Backend, Batch, Cf};

/// Tag byte in front of a JSON-encoded record value.
pub(crate) const RECORD_JSON: u8 = 1;

/// What a commit cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Wall time of the commit, in microseconds.
    pub latency_us: u64,
    /// Objects the commit added to the store.
    pub new_objects: u64,
    /// Encoded bytes those objects take.
    pub new_bytes: u64,
    /// Paths added, modified or deleted relative to the parent.
    pub changed_paths: u64,
}

/// An immutable node of the snapshot tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its id.
    pub id: SnapshotId,
    /// The snapshot it was taken on top of; `None` for an import.
    pub parent: Option<SnapshotId>,
    /// For a merge: the snapshot merged into `parent` to make this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<SnapshotId>,
    /// State fingerprint: equal files give an equal root, whatever the path to them.
    pub root: Hash,
    /// Storage hash of the root directory node.
    pub tree: Hash,
    /// Total bytes of the files in the tree.
    pub bytes: u64,
    /// Free-form label.
    pub label: Option<String>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Search statistics and anything else the controller attaches.
    pub annotations: serde_json::Map<String, serde_json::Value>,
    /// What the commit cost.
    pub metrics: Metrics,
}

impl Snapshot {
    /// Its tree: root node, fingerprint and file bytes.
    pub fn tree_ref(&self) -> crate::tree::TreeRef {
        crate::tree::TreeRef {
            node: self.tree,
            fp: self.root,
            bytes: self.bytes,
        }
    }
}

pub(crate) fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_JSON];
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_writer(&mut out, value).unwrap_or_default();
    out
}

pub(crate) fn decode_record<T: for<'de> Deserialize<'de>>(key: &str, value: &[u8]) -> Result<T> {
    let corrupt = |reason: String| Error::CorruptRecord {
        key: key.to_string(),
        reason,
    };
    match value.split_first() {
        Some((&RECORD_JSON, json)) => {
            serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
        }
        Some((tag, _)) => Err(corrupt(format!("unknown record tag {tag}"))),
        None => Err(corrupt("empty".into())),
    }
}

/// Index key: the child `child` of `parent` (0 for roots).
pub(crate) fn child_key(parent: Option<SnapshotId>, child: SnapshotId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'c');
    k.extend_from_slice(&parent.map_or(0, |p| p.0).to_be_bytes());
    k.extend_from_slice(&child.key());
    k
}

/// Index key: snapshot `id` has fingerprint `root`.
pub(crate) fn root_key(root: &Hash, id: SnapshotId) -> Vec<u8> {
    let mut k = Vec::with_capacity(41);
    k.push(b'r');
    k.extend_from_slice(root.as_bytes());
    k.extend_from_slice(&id.key());
    k
}

/// Adds a new snapshot's record and index keys to `batch`.
pub(crate) fn stage_insert(batch: &mut Batch, s: &Snapshot) {
    batch.put(Cf::Snapshots, s.id.key(), encode_record(s));
    batch.put(Cf::Index, child_key(s.parent, s.id), Vec::new());
    batch.put(Cf::Index, root_key(&s.root, s.id), Vec::new());
}

/// Adds a snapshot's removal to `batch`.
pub(crate) fn stage_remove(batch: &mut Batch, s: &Snapshot) {
    batch.delete(Cf::Snapshots, s.id.key());
    batch.delete(Cf::Index, child_key(s.parent, s.id));
    batch.delete(Cf::Index, root_key(&s.root, s.id));
}

/// Reads one snapshot.
pub(crate) fn load(backend: &dyn Backend, id: SnapshotId) -> Result<Snapshot> {
    let v = backend
        .get(Cf::Snapshots, &id.key())?
        .ok_or(Error::SnapshotNotFound(id))?;
    decode_record(&format!("snapshots/{id}"), &v)
}

/// Every snapshot, in id order.
pub(crate) fn all(backend: &dyn Backend) -> Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    backend.scan(Cf::Snapshots, &[], &mut |k, v| {
        let id = SnapshotId::from_key(k).map_or_else(|| format!("{k:?}"), |i| i.to_string());
        out.push(decode_record(&format!("snapshots/{id}"), v)?);
        Ok(true)
    })?;
    Ok(out)
}

/// The snapshots with an id above `id`, in id order: the others' records are skipped by
/// key, never decoded.
pub(crate) fn after(backend: &dyn Backend, id: u64) -> Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    backend.scan(Cf::Snapshots, &[], &mut |k, v| {
        let key = SnapshotId::from_key(k);
        if key.is_none_or(|i| i.0 > id) {
            let name = key.map_or_else(|| format!("{k:?}"), |i| i.to_string());
            out.push(decode_record::<Snapshot>(&format!("snapshots/{name}"), v)?);
        }
        Ok(true)
    })?;
    out.sort_by_key(|s| s.id);
    Ok(out)
}

/// Ids of the children of `parent` (`None`: the roots), in id order.
pub(crate) fn children(
    backend: &dyn Backend,
    parent: Option<SnapshotId>,
) -> Result<Vec<SnapshotId>> {
    let mut prefix = vec![b'c'];
    prefix.extend_from_slice(&parent.map_or(0, |p| p.0).to_be_bytes());
    let mut out = Vec::new();
    backend.scan(Cf::Index, &prefix, &mut |k, _| {
        if let Some(id) = k.get(9..).and_then(SnapshotId::from_key) {
            out.push(id);
        }
        Ok(true)
    })?;
    Ok(out)
}

/// Ids of the snapshots whose fingerprint is `root`.
pub(crate) fn by_root(backend: &dyn Backend, root: &Hash) -> Result<Vec<SnapshotId>> {
    let mut prefix = vec![b'r'];
    prefix.extend_from_slice(root.as_bytes());
    let mut out = Vec::new();
    backend.scan(Cf::Index, &prefix, &mut |k, _| {
        if let Some(id) = k.get(33..).and_then(SnapshotId::from_key) {
            out.push(id);
        }
        Ok(true)
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, MemBackend};

    fn snap(id: u64, parent: Option<u64>, root: &[u8]) -> Snapshot {
        Snapshot {
            id: SnapshotId(id),
            parent: parent.map(SnapshotId),
            merged: None,
            root: Hash::of(root),
            tree: Hash::of(root),
            bytes: 0,
            label: None,
            created_ms: 0,
            annotations: Default::default(),
            metrics: Metrics::default(),
        }
    }

    #[test]
    fn graph_indexes() {
        let b = MemBackend::new();
        let mut batch = Batch::new();
        for s in [
            snap(1, None, b"a"),
            snap(2, Some(1), b"b"),
            snap(3, Some(1), b"a"),
            snap(300, Some(2), b"c"),
        ] {
            stage_insert(&mut batch, &s);
        }
        b.write(batch, Durability::Sync).expect("write");
        assert_eq!(
            children(&b, Some(SnapshotId(1))).expect("children"),
            vec![SnapshotId(2), SnapshotId(3)]
        );
        assert_eq!(children(&b, None).expect("roots"), vec![SnapshotId(1)]);
        assert_eq!(
            by_root(&b, &Hash::of(b"a")).expect("by root"),
            vec![SnapshotId(1), SnapshotId(3)]
        );
        assert_eq!(
            load(&b, SnapshotId(300)).expect("load").parent,
            Some(SnapshotId(2))
        );
        assert!(matches!(
            load(&b, SnapshotId(9)),
            Err(Error::SnapshotNotFound(_))
        ));
        let mut batch = Batch::new();
        stage_remove(&mut batch, &snap(3, Some(1), b"a"));
        b.write(batch, Durability::Sync).expect("write");
        assert_eq!(
            by_root(&b, &Hash::of(b"a")).expect("by root"),
            vec![SnapshotId(1)]
        );
    }
}

/// What a caller asks of a new snapshot.
#[derive(Clone, Debug, Default)]
pub struct SnapshotRequest {
    /// Its label.
    pub label: Option<String>,
    /// Its annotations.
    pub annotations: serde_json::Map<String, serde_json::Value>,
    /// `Sync` (the default): durable when acknowledged. `Buffered`: written to the
    /// store's log without a sync: it survives a crash of the process (the log is in the
    /// kernel's page cache), not a power cut; the next synced write makes it durable.
    pub durability: crate::store::Durability,
}
