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

use helios_snapshot::{Quota, Repo, Snapshot, SnapshotId, SnapshotRequest, Usage, WorkspaceId};

use crate::mount::{Mount, MountOptions};
use crate::overlay::{self, Lowers, OverlayWorkspace};
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

/// The engines of one repository: what can serve a workspace here, and the lower layers
/// overlay workspaces share.
#[derive(Debug)]
pub struct Engines {
    repo: Arc<Repo>,
    opts: MountOptions,
    lowers: Arc<Lowers>,
    /// `Err`: why the overlay engine cannot work here.
    overlay: std::result::Result<(), String>,
    /// The daemon is not root: FUSE mounts go through fusermount3.
    rootless: bool,
}

impl Engines {
    /// The engines for `repo`, mounting with `opts`. Probes once whether overlayfs works
    /// here (by mounting one); `HELIOS_NO_OVERLAY=1` forces the fallback.
    pub fn new(repo: Arc<Repo>, opts: MountOptions) -> Engines {
        let forced =
            std::env::var_os("HELIOS_NO_OVERLAY").is_some_and(|v| !v.is_empty() && v != "0");
        Engines::build(
            repo,
            opts,
            (!forced).then_some(()).ok_or("HELIOS_NO_OVERLAY is set"),
        )
    }

    /// The engines for `repo` with the overlay engine switched off (the fallback every
    /// host without overlayfs gets), for tests and callers that must not use it.
    pub fn without_overlay(repo: Arc<Repo>, opts: MountOptions) -> Engines {
        Engines::build(repo, opts, Err("switched off by the caller"))
    }

    fn build(
        repo: Arc<Repo>,
        mut opts: MountOptions,
        allowed: std::result::Result<(), &str>,
    ) -> Engines {
        let rootless = crate::fusermount::needed();
        if rootless && opts.passthrough {
            // Registering a backing file needs CAP_SYS_ADMIN.
            opts.passthrough = false;
        }
        let lowers = Arc::new(Lowers::new(repo.clone(), &opts));
        let overlay = if rootless {
            Err(
                "overlayfs mounts need root (CAP_SYS_ADMIN); the daemon runs as an ordinary user"
                    .to_string(),
            )
        } else {
            allowed
                .map_err(str::to_string)
                .and_then(|()| overlay::probe(&lowers))
        };
        if let Err(why) = &overlay {
            lowers.disable_natives(why);
        }
        match &overlay {
            Ok(()) => tracing::info!("the overlay engine works here"),
            Err(why) => tracing::info!(reason = %why, "the overlay engine is not available"),
        }
        Engines {
            repo,
            opts,
            lowers,
            overlay,
            rootless,
        }
    }

    /// What a daemon without root gives up, for a fuse workspace's `engine_reason`.
    fn rootless_note(&self) -> &'static str {
        if self.rootless {
            "; without root: mounted through fusermount3, no FUSE passthrough (it needs CAP_SYS_ADMIN), no allow_other unless /etc/fuse.conf has user_allow_other"
        } else {
            ""
        }
    }

    /// Unmounts what the engines keep mounted for no workspace in particular (the
    /// overlay engine's unused lower views). For a clean stop, after every workspace.
    pub fn shutdown(&self) {
        self.lowers.shutdown();
    }

    /// The options FUSE mounts get.
    pub fn options(&self) -> &MountOptions {
        &self.opts
    }

    /// Makes forks of snapshot `id` fast (see `Lowers::warm`).
    pub fn warm(&self, id: SnapshotId) -> Result<crate::overlay::Warmed> {
        self.lowers.warm(id)
    }

    /// The overlay engine's lower layers.
    pub fn lowers(&self) -> &Lowers {
        &self.lowers
    }

    /// Why the overlay engine cannot serve here, or `None` when it can.
    pub fn overlay_unavailable(&self) -> Option<&str> {
        self.overlay.as_ref().err().map(String::as_str)
    }

    /// The engine that serves a workspace asked for with `choice`, and why; an error
    /// naming the cause when the engine asked for cannot serve here.
    pub fn resolve(&self, choice: EngineChoice) -> Result<(Engine, String)> {
        match (choice, &self.overlay) {
            (EngineChoice::Auto, Ok(())) => {
                Ok((Engine::Overlay, "auto: kernel overlayfs works here".into()))
            }
            (EngineChoice::Auto, Err(why)) => Ok((
                Engine::Fuse,
                format!("auto: overlay unavailable ({why}){}", self.rootless_note()),
            )),
            (EngineChoice::Exactly(Engine::Fuse), _) => {
                Ok((Engine::Fuse, format!("requested{}", self.rootless_note())))
            }
            (EngineChoice::Exactly(Engine::Overlay), Ok(())) => {
                Ok((Engine::Overlay, "requested".into()))
            }
            (EngineChoice::Exactly(Engine::Overlay), Err(why)) => Err(Error::Unsupported(format!(
                "the overlay engine cannot work here: {why}; use fuse or auto"
            ))),
        }
    }

    /// Mounts workspace `id` at `mountpoint` with `engine`.
    pub fn mount(
        &self,
        engine: Engine,
        id: WorkspaceId,
        mountpoint: &Path,
    ) -> Result<Box<dyn MountedWorkspace>> {
        match engine {
            Engine::Fuse => {
                let ws = self.repo.open_workspace(id)?;
                Ok(Box::new(Mount::fuse(ws, mountpoint, &self.opts)?))
            }
            Engine::Overlay => {
                if let Err(why) = &self.overlay {
                    return Err(Error::Unsupported(format!(
                        "the overlay engine cannot work here: {why}"
                    )));
                }
                Ok(Box::new(OverlayWorkspace::mount(
                    self.repo.clone(),
                    self.lowers.clone(),
                    id,
                    mountpoint,
                )?))
            }
        }
    }
}

/// What an engine does for a mounted workspace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// File data goes straight between the kernel and real files.
    pub passthrough: bool,
    /// Requests come through FUSE-over-io_uring (a ring per CPU) instead of the device.
    pub io_uring: bool,
}

/// A workspace served to the kernel at a mountpoint. Dropping it unmounts.
pub trait MountedWorkspace: Send + Sync + std::fmt::Debug {
    /// Which engine serves it.
    fn engine(&self) -> Engine;
    /// Where it is mounted.
    fn mountpoint(&self) -> &Path;
    /// What the engine does for it here.
    fn capabilities(&self) -> Capabilities;
    /// What its lower layer is, for an engine that has one (overlay: `native` or
    /// `view`).
    fn lower(&self) -> Option<&'static str> {
        None
    }
    /// The FUSE requests its mount served, by opcode, for an engine that serves any
    /// (the overlay engine serves none: the kernel does it all).
    fn requests(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Its quota and what it holds against it, for an engine that keeps quotas (fuse).
    fn quota(&self) -> Option<(Quota, Usage)> {
        None
    }
    /// Sets (or with `None` removes) its quota and returns its usage; engines that
    /// keep none refuse.
    fn set_quota(&self, _quota: Option<Quota>) -> Result<Option<Usage>> {
        Err(Error::Unsupported(format!(
            "the {} engine keeps no quotas (the kernel writes its files directly); \
             mount the workspace with the fuse engine",
            self.engine().name()
        )))
    }
    /// The snapshot it stands on.
    fn base(&self) -> Option<SnapshotId>;
    /// True when its content differs from its base.
    fn dirty(&self) -> bool;
    /// Snapshots it, including every write that returned before this call (synced).
    fn snapshot(
        &self,
        label: Option<String>,
        annotations: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Snapshot> {
        self.snapshot_with(SnapshotRequest {
            label,
            annotations,
            ..Default::default()
        })
    }
    /// `snapshot` with every choice of the request (durability among them).
    fn snapshot_with(&self, req: SnapshotRequest) -> Result<Snapshot>;
    /// Switches it to snapshot `id` in place (refused when dirty, unless `discard`).
    fn checkout(&self, id: SnapshotId, discard: bool) -> Result<()>;
    /// Persists its uncommitted changes (clean shutdown).
    fn save(&self) -> Result<()>;
    /// Unmounts; a busy mount is detached lazily and reported.
    fn unmount(self: Box<Self>) -> Result<()>;
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
            io_uring: self.io_uring(),
        }
    }

    fn base(&self) -> Option<SnapshotId> {
        self.workspace().base()
    }

    fn quota(&self) -> Option<(Quota, Usage)> {
        self.workspace().limits()
    }

    fn set_quota(&self, quota: Option<Quota>) -> Result<Option<Usage>> {
        Ok(self.workspace().set_quota(quota)?)
    }

    fn dirty(&self) -> bool {
        self.workspace().dirty()
    }

    fn snapshot_with(&self, req: SnapshotRequest) -> Result<Snapshot> {
        Mount::snapshot_with(self, req)
    }

    fn requests(&self) -> Vec<(&'static str, u64)> {
        Mount::requests(self)
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
    }
}
