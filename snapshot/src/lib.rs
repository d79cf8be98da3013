//! helios-snapshot: the core of helios. A content-addressed store (BLAKE3, lz4,
//! RocksDB), immutable Merkle trees, the snapshot tree, and mutable copy-on-write
//! workspaces with O(1) fork and checkout. No FUSE, no async runtime, no wire types.

mod acl;
mod commit;
mod delta;
mod diff;
mod edits;
mod error;
mod gc;
mod hash;
mod ids;
mod io;
mod journal;
mod merge;
mod name;
mod pack;
mod repo;
mod snapshot;
pub mod store;
pub mod tree;

pub use tree::Special;
mod workspace;

pub use delta::{DeltaLimits, DeltaStats};
pub use diff::{Change, ChangeKind};
pub use edits::{Edit, Edits};
pub use error::{Error, Result};
pub use gc::{FsckReport, GcReport};
pub use hash::Hash;
pub use ids::{Ino, SnapshotId, WorkspaceId};
pub use io::{StubStats, attrs_of as host_attrs, special_of as host_special};
pub use merge::LINE_MERGE_MAX;
pub use name::{NAME_MAX, Name};
pub use pack::{DELTA_DEPTH, PackReport};
pub use repo::{DEFAULT_CACHE_BYTES, Repo, Stats};
pub use snapshot::{Metrics, Snapshot, SnapshotRequest};
pub use store::Durability;
pub use workspace::{
    DirEntry, Invalidation, Kind, Quota, RenameMode, SetAttr, SetTime, Stat, Usage, Workspace,
    WorkspaceRecord, XATTR_VALUE_MAX, XattrMode,
};
