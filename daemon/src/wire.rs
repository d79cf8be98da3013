//! Request and response bodies: the API's JSON contract (`docs/api.md`). Core types are
//! converted here and never serialized directly.

use helios_snapshot::{Change, Snapshot};
use serde::{Deserialize, Serialize};

/// A snapshot as the API shows it.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct SnapshotOut {
    /// `s<N>`.
    pub id: String,
    /// Parent id, `null` for an import.
    pub parent: Option<String>,
    /// For a merge: the snapshot merged into `parent`; `null` otherwise.
    #[serde(default)]
    pub merged: Option<String>,
    /// State fingerprint (hex BLAKE3).
    pub root: String,
    /// Label.
    pub label: Option<String>,
    /// RFC 3339 creation time.
    pub created: String,
    /// Annotations.
    pub annotations: serde_json::Map<String, serde_json::Value>,
    /// Commit metrics.
    pub metrics: MetricsOut,
    /// Total bytes of the files in it.
    pub bytes: u64,
}

/// Commit metrics.
#[derive(Debug, Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
pub struct MetricsOut {
    /// Wall time of the commit in microseconds.
    pub latency_us: u64,
    /// Objects added.
    pub new_objects: u64,
    /// Bytes added.
    pub new_bytes: u64,
    /// Paths added, modified or deleted.
    pub changed_paths: u64,
}

impl From<&Snapshot> for SnapshotOut {
    fn from(s: &Snapshot) -> SnapshotOut {
        let created = std::time::UNIX_EPOCH + std::time::Duration::from_millis(s.created_ms);
        SnapshotOut {
            id: s.id.to_string(),
            parent: s.parent.map(|p| p.to_string()),
            merged: s.merged.map(|m| m.to_string()),
            root: s.root.to_string(),
            label: s.label.clone(),
            created: humantime::format_rfc3339_millis(created).to_string(),
            annotations: s.annotations.clone(),
            metrics: MetricsOut {
                latency_us: s.metrics.latency_us,
                new_objects: s.metrics.new_objects,
                new_bytes: s.metrics.new_bytes,
                changed_paths: s.metrics.changed_paths,
            },
            bytes: s.bytes,
        }
    }
}

/// A workspace as the API shows it.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct WorkspaceOut {
    /// `w<N>`.
    pub id: String,
    /// Absolute path it is mounted at.
    pub mountpoint: String,
    /// `fuse` or `overlay`.
    pub engine: String,
    /// Why this engine serves it.
    pub engine_reason: String,
    /// The snapshot it stands on.
    pub base: Option<String>,
    /// Uncommitted changes exist.
    pub dirty: bool,
    /// Whether it is mounted now.
    pub mounted: bool,
    /// Deleted once unmounted from outside (`umount DIR`).
    #[serde(default)]
    pub drop_on_unmount: bool,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Whether open files are passed through to the kernel.
    pub passthrough: bool,
    /// Whether FUSE requests come through io_uring rings (fuse engine).
    #[serde(default)]
    pub io_uring: bool,
    /// Overlay engine: its lower layer, `native` (a directory tree the kernel reads
    /// alone), `delta` (the difference from a native one, stacked over it) or `view` (a
    /// read-only FUSE view of the snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<String>,
    /// Its limits, when it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<helios_snapshot::Quota>,
    /// What it holds against its quota (known while it has one and is mounted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<helios_snapshot::Usage>,
}

/// What `POST /v1/snapshots/{id}/warm` did.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct WarmOut {
    /// The snapshot.
    pub snapshot: String,
    /// A native lower layer serves new overlay workspaces over it.
    pub native: bool,
    /// Paths in the snapshot.
    pub paths: u64,
    /// Regular files with data, all in the materialized-file cache now.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Microseconds it took (0 when it was warm already).
    pub latency_us: u64,
}

/// One changed path.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct ChangeOut {
    /// Path relative to the root.
    pub path: String,
    /// `added`, `modified` or `deleted`.
    pub kind: String,
    /// Size in bytes (in `b`; in `a` for deletions).
    pub size: u64,
}

impl From<&Change> for ChangeOut {
    fn from(c: &Change) -> ChangeOut {
        ChangeOut {
            path: c.path.clone(),
            kind: match c.kind {
                helios_snapshot::ChangeKind::Added => "added",
                helios_snapshot::ChangeKind::Modified => "modified",
                helios_snapshot::ChangeKind::Deleted => "deleted",
            }
            .into(),
            size: c.size,
        }
    }
}

/// `GET /v1/snapshots/{a}/diff/{b}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DiffOut {
    /// Changes in path order.
    pub changes: Vec<ChangeOut>,
}

/// `POST /v1/snapshots/import`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImportIn {
    /// Absolute path of a directory.
    pub path: String,
    /// Label.
    pub label: Option<String>,
}

/// `PATCH /v1/snapshots/{id}`.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchIn {
    /// New label; `null` clears.
    #[serde(default, with = "double_option")]
    pub label: Option<Option<String>>,
    /// Annotations to merge; a `null` value removes a key.
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    /// `sync` (default) or `buffered`.
    pub durability: Option<String>,
}

/// Distinguishes a missing field from an explicit `null`.
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Ok(Some(Option::<String>::deserialize(d)?))
    }

    pub fn serialize<S: Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        v.clone().flatten().serialize(s)
    }
}

/// `POST /v1/snapshots/{id}/export`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportIn {
    /// Absolute path: missing or an empty directory.
    pub path: String,
}

/// `POST /v1/workspaces`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceIn {
    /// Absolute path of an existing empty directory.
    pub mountpoint: String,
    /// Snapshot to start from; empty when absent.
    pub from: Option<String>,
    /// `fuse`, `overlay` or `auto` (default).
    pub engine: Option<String>,
    /// The workspace lives as long as its mount: unmounted from outside (`umount DIR`),
    /// it is deleted (what `mount -t helios` asks for).
    #[serde(default)]
    pub drop_on_unmount: bool,
    /// A read-only mount of `from` (the fuse engine): writes get EROFS, snapshots are
    /// refused, checkouts switch it to another snapshot.
    #[serde(default)]
    pub read_only: bool,
    /// Limits on bytes and names (the fuse engine): past one, changes get EDQUOT.
    #[serde(default)]
    pub quota: Option<helios_snapshot::Quota>,
}

/// `PUT /v1/workspaces/{id}/quota`: the new limits (an empty object removes them).
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct QuotaIn {
    /// Bytes of regular files, counted once per name.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// Names (files, directories, symlinks, special files), once per name.
    #[serde(default)]
    pub inodes: Option<u64>,
}

/// `POST /v1/workspaces/{id}/snapshot`.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SnapshotIn {
    /// Label.
    pub label: Option<String>,
    /// Annotations.
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    /// `sync` (default) or `buffered`.
    pub durability: Option<String>,
}

/// `POST /v1/snapshots/{a}/merge/{b}`.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MergeIn {
    /// Label of the merge snapshot.
    pub label: Option<String>,
    /// Its annotations.
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    /// `sync` (default) or `buffered`.
    pub durability: Option<String>,
    /// A workspace (id) to check out to the merge once made; it must have no
    /// uncommitted changes.
    pub into: Option<String>,
}

/// `POST /v1/workspaces/{id}/checkout`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutIn {
    /// Snapshot id.
    pub snapshot: String,
    /// Throw away uncommitted changes.
    #[serde(default)]
    pub discard: bool,
}

/// `DELETE /v1/snapshots/{id}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemovedOut {
    /// Ids removed.
    pub removed: Vec<String>,
}
