//! The one interface the daemon holds a mounted workspace through, whatever engine
//! serves it, and the choice of engine.
//!
//! `EngineChoice` is what a caller asks for (`auto`, `fuse`, `overlay`); `resolve` turns
//! it into the `Engine` that will serve the workspace here and the reason, or a clear
//! error when the asked-for engine cannot work on this host. `mount` starts the engine;
//! the result is a `MountedWorkspace`: snapshot, checkout, dirty, save, unmount.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use helios_snapshot::{Snapshot, SnapshotId, Workspace};

use crate::mount::{Mount, MountOptions};
use crate::{Error, Result};

/// The engine that serves a workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Engine {
    /// Userspace FUSE (fuser), with passthrough for open files where the kernel allows.
    Fuse,
    /// Kernel overlayfs over a materialized lower layer.
    Overlay,
}

impl Engine {
    /// The engine's name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Fuse => "fuse",
            Engine::Overlay => "overlay",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a caller asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// The fastest engine that works here.
    #[default]
    Auto,
    /// This engine, or an error.
    Exactly(Engine),
}

impl FromStr for EngineChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<EngineChoice> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "fuse" => Ok(EngineChoice::Exactly(Engine::Fuse)),
            "overlay" => Ok(EngineChoice::Exactly(Engine::Overlay)),
            other => Err(Error::Unsupported(format!(
                "unknown engine {other:?}: fuse, overlay or auto"
            ))),
        }
    }
}

/// The engine that serves a workspace asked for with `choice`, and why; an error when
/// the engine asked for cannot serve it here.
pub fn resolve(choice: EngineChoice) -> Result<(Engine, String)> {
    match choice {
        EngineChoice::Auto => Ok((
            Engine::Fuse,
            "auto: the overlay engine is not built yet; fuse serves every workspace".into(),
        )),
        EngineChoice::Exactly(Engine::Fuse) => Ok((Engine::Fuse, "requested".into())),
        EngineChoice::Exactly(Engine::Overlay) => Err(Error::Unsupported(
            "the overlay engine is not available in this build; use fuse or auto".into(),
        )),
    }
}

/// What an engine does for a mounted workspace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// File data goes straight between the kernel and real files.
    pub passthrough: bool,
}

/// A workspace served to the kernel at a mountpoint. Dropping it unmounts.
pub trait MountedWorkspace: Send + Sync + std::fmt::Debug {
    /// Which engine serves it.
    fn engine(&self) -> Engine;
    /// Where it is mounted.
    fn mountpoint(&self) -> &Path;
    /// What the engine does for it here.
    fn capabilities(&self) -> Capabilities;
    /// The snapshot it stands on.
    fn base(&self) -> Option<SnapshotId>;
    /// True when its content differs from its base.
    fn dirty(&self) -> bool;
    /// Snapshots it, including every write that returned before this call.
    fn snapshot(
        &self,
        label: Option<String>,
        annotations: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Snapshot>;
    /// Switches it to snapshot `id` in place (refused when dirty, unless `discard`).
    fn checkout(&self, id: SnapshotId, discard: bool) -> Result<()>;
    /// Persists its uncommitted changes (clean shutdown).
    fn save(&self) -> Result<()>;
    /// Unmounts; a busy mount is detached lazily and reported.
    fn unmount(self: Box<Self>) -> Result<()>;
}

/// Mounts `ws` at `mountpoint` with `engine`.
pub fn mount(
    engine: Engine,
    ws: Arc<Workspace>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<Box<dyn MountedWorkspace>> {
    match engine {
        Engine::Fuse => Ok(Box::new(Mount::fuse(ws, mountpoint, opts)?)),
        Engine::Overlay => Err(Error::Unsupported(
            "the overlay engine is not available in this build".into(),
        )),
    }
}

impl MountedWorkspace for Mount {
    fn engine(&self) -> Engine {
        Engine::Fuse
    }

    fn mountpoint(&self) -> &Path {
        Mount::mountpoint(self)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            passthrough: self.passthrough(),
        }
    }

    fn base(&self) -> Option<SnapshotId> {
        self.workspace().base()
    }

    fn dirty(&self) -> bool {
        self.workspace().dirty()
    }

    fn snapshot(
        &self,
        label: Option<String>,
        annotations: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Snapshot> {
        Mount::snapshot(self, label, annotations)
    }

    fn checkout(&self, id: SnapshotId, discard: bool) -> Result<()> {
        Mount::checkout(self, id, discard)
    }

    fn save(&self) -> Result<()> {
        Ok(self.workspace().save()?)
    }

    fn unmount(self: Box<Self>) -> Result<()> {
        Mount::unmount(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_resolve() {
        assert_eq!(
            "auto".parse::<EngineChoice>().ok(),
            Some(EngineChoice::Auto)
        );
        assert_eq!(
            "fuse".parse::<EngineChoice>().ok(),
            Some(EngineChoice::Exactly(Engine::Fuse))
        );
        let e = "zfs".parse::<EngineChoice>().expect_err("unknown");
        assert!(e.to_string().contains("fuse, overlay or auto"), "{e}");
        assert_eq!(resolve(EngineChoice::Auto).expect("auto").0, Engine::Fuse);
        let e = resolve(EngineChoice::Exactly(Engine::Overlay)).expect_err("not built");
        assert!(e.to_string().contains("overlay"), "{e}");
    }
}
