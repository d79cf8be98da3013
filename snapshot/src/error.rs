//! The crate's one error type. Variants are semantic so callers (the FUSE engine, the
//! daemon) can map them to errno values and HTTP statuses without parsing messages.

use std::io;
use std::path::PathBuf;

use crate::hash::Hash;
use crate::ids::{SnapshotId, WorkspaceId};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the snapshot core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No snapshot with this id.
    #[error("snapshot {0} not found")]
    SnapshotNotFound(SnapshotId),
    /// No workspace with this id.
    #[error("workspace {0} not found")]
    WorkspaceNotFound(WorkspaceId),
    /// A path component or inode does not exist (ENOENT).
    #[error("no such file or directory: {0}")]
    NoEntry(String),
    /// The target name exists already (EEXIST).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A directory was required (ENOTDIR).
    #[error("not a directory: {0}")]
    NotADirectory(String),
    /// A non-directory was required (EISDIR).
    #[error("is a directory: {0}")]
    IsADirectory(String),
    /// The directory has entries (ENOTEMPTY).
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    /// A name is empty, `.`, `..`, or contains `/` or NUL (EINVAL).
    #[error("invalid name {0:?}: names may not be empty, '.', '..', or contain '/' or NUL")]
    InvalidName(String),
    /// A name is longer than 255 bytes (ENAMETOOLONG).
    #[error("name too long ({0} bytes, the limit is 255)")]
    NameTooLong(usize),
    /// Not a symlink where one was required (EINVAL for readlink).
    #[error("not a symlink: {0}")]
    NotASymlink(String),
    /// An extended attribute is absent (ENODATA).
    #[error("no such extended attribute")]
    NoAttr,
    /// An argument is outside what is allowed (EINVAL).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operation would move a directory into its own subtree (EINVAL).
    #[error("cannot move a directory into itself: {0}")]
    Loop(String),
    /// The workspace has uncommitted changes and discard was not asked for.
    #[error("workspace {0} has uncommitted changes; snapshot them or pass discard")]
    Dirty(WorkspaceId),
    /// The snapshot is in use (a workspace stands on it) and cannot be removed.
    #[error("snapshot {id} is in use: {why}")]
    InUse {
        /// The snapshot.
        id: SnapshotId,
        /// Who uses it.
        why: String,
    },
    /// A merge found paths both sides changed in ways that do not merge.
    #[error("merge conflict in {} path(s): {}", .0.len(), conflict_list(.0))]
    Conflict(Vec<String>),
    /// Two snapshots share no ancestor (two imports), so there is nothing to merge against.
    #[error("snapshots {0} and {1} have no common ancestor")]
    NoCommonAncestor(SnapshotId, SnapshotId),
    /// The workspace is read-only (EROFS).
    #[error("workspace is read-only")]
    ReadOnly,
    /// The change would take the workspace past its quota (EDQUOT).
    #[error("workspace {workspace} quota exceeded: {what}")]
    QuotaExceeded {
        /// The workspace.
        workspace: WorkspaceId,
        /// Which limit, with the usage and the limit.
        what: String,
    },
    /// A stored object does not match its hash or cannot be decoded.
    #[error("object {hash} is corrupt: {reason}")]
    Corrupt {
        /// The object's name.
        hash: Hash,
        /// What is wrong with it.
        reason: String,
    },
    /// An object that a tree references is missing from the store.
    #[error("object {0} is missing from the store")]
    MissingObject(Hash),
    /// A record (snapshot, workspace, meta key) cannot be decoded.
    #[error("corrupt record {key}: {reason}")]
    CorruptRecord {
        /// Which record.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store was written by another format version.
    #[error("store format version {found} is not supported (this build reads version {expected})")]
    FormatVersion {
        /// The version found on disk.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// A path outside what is allowed (export target not empty, escaping names).
    #[error("path not allowed: {path}: {why}")]
    PathNotAllowed {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// An operating-system I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Db(String),
}

/// The first conflicting paths, for a message (the error holds all of them).
fn conflict_list(paths: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = paths
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > SHOWN {
        s.push_str(&format!(", and {} more", paths.len() - SHOWN));
    }
    s
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The closest POSIX errno for this error, for filesystem engines.
    pub fn errno(&self) -> i32 {
        match self {
            Error::SnapshotNotFound(_) | Error::WorkspaceNotFound(_) | Error::NoEntry(_) => {
                libc::ENOENT
            }
            Error::AlreadyExists(_) => libc::EEXIST,
            Error::NotADirectory(_) => libc::ENOTDIR,
            Error::IsADirectory(_) => libc::EISDIR,
            Error::NotEmpty(_) => libc::ENOTEMPTY,
            Error::InvalidName(_)
            | Error::InvalidArgument(_)
            | Error::Loop(_)
            | Error::NotASymlink(_) => libc::EINVAL,
            Error::NameTooLong(_) => libc::ENAMETOOLONG,
            Error::NoAttr => libc::ENODATA,
            Error::Dirty(_)
            | Error::InUse { .. }
            | Error::Conflict(_)
            | Error::NoCommonAncestor(..) => libc::EBUSY,
            Error::ReadOnly => libc::EROFS,
            Error::QuotaExceeded { .. } => libc::EDQUOT,
            Error::PathNotAllowed { .. } => libc::EPERM,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::Corrupt { .. }
            | Error::MissingObject(_)
            | Error::CorruptRecord { .. }
            | Error::FormatVersion { .. }
            | Error::Db(_) => libc::EIO,
        }
    }

    /// True for errors that mean the store or the machine failed rather than the caller
    /// asking for something impossible; engines log these at `error!`.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. }
                | Error::MissingObject(_)
                | Error::CorruptRecord { .. }
                | Error::FormatVersion { .. }
                | Error::Db(_)
                | Error::Io { .. }
        )
    }
}
