//! helios-fs: the engines that serve a helios workspace to the kernel. `fuse` (fuser,
//! multi-threaded, kernel caching with explicit invalidation, FUSE passthrough where the
//! kernel allows it) and `overlay` (kernel overlayfs over read-only FUSE views of
//! snapshots). No async runtime, no wire types.

mod engine;
mod errno;
mod fuse;
mod fusermount;
mod mount;
mod overlay;

pub use engine::{Capabilities, Engine, EngineChoice, Engines, MountedWorkspace};
pub use fusermount::detach;
pub use mount::{JOURNAL_INTERVAL, Mount, MountOptions, default_threads, uring_available};
pub use overlay::{Lowers, OverlayWorkspace, Warmed};

/// Errors of the engines.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The workspace core refused or failed.
    #[error(transparent)]
    Core(#[from] helios_snapshot::Error),
    /// The engine asked for cannot serve here, or is unknown.
    #[error("{0}")]
    Unsupported(String),
    /// Mounting or unmounting failed.
    #[error("{context}: {source}")]
    Mount {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
