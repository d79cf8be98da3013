//! The daemon's registry: the repo and every mounted workspace. All methods block
//! (RocksDB, mount(2)); handlers call them in `spawn_blocking`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use helios_fs::{Engine, EngineChoice, Engines, MountOptions, MountedWorkspace};
use helios_snapshot::{Repo, Snapshot, SnapshotId, SnapshotRequest, WorkspaceId, WorkspaceRecord};
use parking_lot::Mutex;

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::wire::WorkspaceOut;

/// How a new workspace lives.
#[derive(Clone, Copy, Debug, Default)]
pub struct Create {
    /// Deleted once unmounted from outside (`mount -t helios`).
    pub drop_on_unmount: bool,
    /// Mounted read-only (the fuse engine).
    pub read_only: bool,
    /// Its limits (the fuse engine).
    pub quota: Option<helios_snapshot::Quota>,
}

/// A mounted workspace, whatever engine serves it.
pub struct Mounted {
    mount: Box<dyn MountedWorkspace>,
    mountpoint: PathBuf,
    /// For a workspace that lives as long as its mount (`drop_on_unmount`): the id of
    /// the mount on top at its mountpoint, kept current across checkouts (held while
    /// one runs, so the watcher never mistakes a checkout's switch for an unmount).
    top: Option<Mutex<Option<u64>>>,
}

/// The registry of the daemon.
pub struct Daemon {
    /// The repository.
    pub repo: Arc<Repo>,
    mounts: Mutex<HashMap<WorkspaceId, Arc<Mounted>>>,
    /// Metrics.
    pub metrics: Metrics,
    engines: Engines,
    /// Serializes workspace creation: checking a mountpoint and mounting on it is one step.
    creating: Mutex<()>,
}

fn props(
    mountpoint: &Path,
    engine: Engine,
    engine_reason: &str,
    drop_on_unmount: bool,
) -> serde_json::Value {
    let mut p = serde_json::json!({"mountpoint": mountpoint, "engine": engine.name(), "engine_reason": engine_reason});
    if drop_on_unmount {
        p["drop_on_unmount"] = true.into();
    }
    p
}

fn drop_on_unmount(rec: &WorkspaceRecord) -> bool {
    rec.props.get("drop_on_unmount").and_then(|v| v.as_bool()) == Some(true)
}

/// The id of the mount on top at `path` (per /proc/self/mountinfo): of the mounts at
/// that path, the one no other mount there stands on.
pub fn top_mount(path: &Path) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    let at: Vec<(u64, u64)> = info
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let id = f.next()?.parse().ok()?;
            let parent = f.next()?.parse().ok()?;
            let mp = f.nth(2)?;
            (unescape(mp) == want).then_some((id, parent))
        })
        .collect();
    at.iter()
        .filter(|(id, _)| !at.iter().any(|(_, parent)| parent == id))
        .map(|(id, _)| *id)
        .max()
}

/// Whether mount `id` is still in the mount table.
fn mount_exists(id: u64) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    let want = id.to_string();
    info.lines()
        .any(|l| l.split(' ').next() == Some(want.as_str()))
}

/// The engine a persisted workspace was created with (fuse for records older than the
/// field).
fn engine_of(rec: &WorkspaceRecord) -> Engine {
    match rec.props.get("engine").and_then(|e| e.as_str()) {
        Some("overlay") => Engine::Overlay,
        _ => Engine::Fuse,
    }
}

fn mountpoint_of(rec: &WorkspaceRecord) -> Option<PathBuf> {
    rec.props
        .get("mountpoint")
        .and_then(|m| m.as_str())
        .map(PathBuf::from)
}

/// True when `path` is a mount point now (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|mp| unescape(mp) == want))
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

impl Daemon {
    /// A registry over `repo`; nothing mounted yet.
    pub fn new(repo: Arc<Repo>, mount_opts: MountOptions) -> Daemon {
        Daemon {
            engines: Engines::new(repo.clone(), mount_opts),
            repo,
            mounts: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            creating: Mutex::new(()),
        }
    }

    fn out(&self, id: WorkspaceId) -> ApiResult<WorkspaceOut> {
        let rec = self.repo.workspace_record(id)?;
        let mounted = self.mounts.lock().get(&id).cloned();
        let (dirty, base, caps, lower, usage) = match &mounted {
            Some(m) => (
                m.mount.dirty(),
                m.mount.base(),
                m.mount.capabilities(),
                m.mount.lower(),
                m.mount.quota().map(|(_, u)| u),
            ),
            None => (rec.head.is_some(), rec.base, Default::default(), None, None),
        };
        Ok(WorkspaceOut {
            id: id.to_string(),
            mountpoint: mountpoint_of(&rec)
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            engine: engine_of(&rec).name().into(),
            engine_reason: rec
                .props
                .get("engine_reason")
                .and_then(|r| r.as_str())
                .unwrap_or_default()
                .to_string(),
            base: base.map(|b| b.to_string()),
            dirty,
            mounted: mounted.is_some(),
            drop_on_unmount: drop_on_unmount(&rec),
            read_only: rec.read_only,
            passthrough: caps.passthrough,
            io_uring: caps.io_uring,
            lower: lower.map(str::to_string),
            quota: rec.quota,
            usage,
        })
    }

    /// Sets (or removes) a workspace's quota.
    pub fn set_quota(
        &self,
        id: WorkspaceId,
        quota: Option<helios_snapshot::Quota>,
    ) -> ApiResult<WorkspaceOut> {
        let mounted = self.mounts.lock().get(&id).cloned();
        match mounted {
            Some(m) => {
                m.mount.set_quota(quota)?;
            }
            None => {
                self.unmounted_fuse(id)?;
                self.repo.open_workspace(id)?.set_quota(quota)?;
            }
        }
        self.out(id)
    }

    /// The FUSE requests a mounted workspace served, by opcode.
    pub fn requests(&self, id: WorkspaceId) -> ApiResult<serde_json::Value> {
        self.repo.workspace_record(id)?;
        let mounted = self.mounts.lock().get(&id).cloned();
        let Some(m) = mounted else {
            return Err(crate::error::ApiError::conflict(
                "not_mounted",
                format!("workspace {id} is not mounted"),
            ));
        };
        let by_op: serde_json::Map<String, serde_json::Value> = m
            .mount
            .requests()
            .into_iter()
            .map(|(op, n)| (op.to_string(), n.into()))
            .collect();
        let total: u64 = by_op.values().filter_map(serde_json::Value::as_u64).sum();
        Ok(serde_json::json!({
            "workspace": id.to_string(),
            "engine": m.mount.engine().name(),
            "total": total,
            "by_op": by_op,
        }))
    }

    /// Makes forks of snapshot `id` fast (every file in the file cache; a native lower
    /// layer for the overlay engine where it works).
    pub fn warm(&self, id: SnapshotId) -> ApiResult<helios_fs::Warmed> {
        Ok(self.engines.warm(id)?)
    }

    /// Checks a mountpoint: absolute, an existing empty directory, not in use.
    fn check_mountpoint(&self, mountpoint: &str) -> ApiResult<PathBuf> {
        let path = PathBuf::from(mountpoint);
        if !path.is_absolute() {
            return Err(ApiError::bad_request(format!(
                "mountpoint {mountpoint:?} is not an absolute path"
            )));
        }
        let meta = std::fs::metadata(&path)
            .map_err(|e| ApiError::bad_request(format!("mountpoint {mountpoint:?}: {e}")))?;
        if !meta.is_dir() {
            return Err(ApiError::bad_request(format!(
                "mountpoint {mountpoint:?} is not a directory"
            )));
        }
        // One spelling per directory (no trailing slash, no symlinks, no `..`): what
        // /proc/self/mountinfo shows and what the registry compares.
        let path = std::fs::canonicalize(&path)
            .map_err(|e| ApiError::bad_request(format!("mountpoint {mountpoint:?}: {e}")))?;
        // A mount inside another workspace would be served through that workspace (and
        // end up in its snapshots); one inside the state dir would hide helios's data.
        if let Some((id, m)) = self
            .mounts
            .lock()
            .iter()
            .find(|(_, m)| path != m.mountpoint && path.starts_with(&m.mountpoint))
        {
            return Err(ApiError::bad_request(format!(
                "mountpoint {mountpoint:?} is inside workspace {id}, mounted at {}: workspaces do not nest",
                m.mountpoint.display()
            )));
        }
        if let Ok(state) = std::fs::canonicalize(self.repo.dir())
            && path.starts_with(&state)
        {
            return Err(ApiError::bad_request(format!(
                "mountpoint {mountpoint:?} is inside the state directory {}",
                state.display()
            )));
        }
        let in_use = self.mounts.lock().values().any(|m| m.mountpoint == path);
        if in_use || is_mounted(&path) {
            return Err(ApiError::conflict(
                "conflict",
                format!("{mountpoint:?} is already a mount point"),
            ));
        }
        let mut entries = std::fs::read_dir(&path)
            .map_err(|e| ApiError::bad_request(format!("mountpoint {mountpoint:?}: {e}")))?;
        if entries.next().is_some() {
            return Err(ApiError::bad_request(format!(
                "mountpoint {mountpoint:?} is not empty"
            )));
        }
        Ok(path)
    }

    /// Creates a workspace over `from` (or empty) and mounts it.
    pub fn create(
        &self,
        mountpoint: &str,
        from: Option<SnapshotId>,
        engine: EngineChoice,
        how: Create,
    ) -> ApiResult<WorkspaceOut> {
        let Create {
            drop_on_unmount,
            read_only,
            quota,
        } = how;
        let quota = quota.filter(|q| !q.is_unlimited());
        let (engine, reason) = match (read_only, quota.is_some(), engine) {
            (true, true, _) => {
                return Err(ApiError::bad_request(
                    "a read-only workspace cannot grow: it takes no quota",
                ));
            }
            (_, true, EngineChoice::Exactly(Engine::Overlay)) => {
                return Err(ApiError::bad_request(
                    "quotas are kept by the fuse engine (the overlay engine's writes go \
                     straight to disk); ask for fuse or auto",
                ));
            }
            (_, true, _) => (
                Engine::Fuse,
                "quota: the fuse engine (it can refuse a write; overlayfs cannot)".to_string(),
            ),
            (true, false, EngineChoice::Exactly(Engine::Overlay)) => {
                return Err(ApiError::bad_request(
                    "read-only workspaces are served by the fuse engine; ask for fuse or auto",
                ));
            }
            (true, false, _) => (Engine::Fuse, "read-only: the fuse engine".to_string()),
            (false, false, choice) => self
                .engines
                .resolve(choice)
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        };
        let _one_at_a_time = self.creating.lock();
        let path = self.check_mountpoint(mountpoint)?;
        let start = Instant::now();
        let id = self
            .repo
            .create_workspace_with(
                from,
                read_only,
                props(&path, engine, &reason, drop_on_unmount),
                quota,
            )?
            .id();
        match self.mount(engine, id, &path, drop_on_unmount) {
            Ok(()) => {}
            Err(e) => {
                let _ = self.repo.delete_workspace(id);
                return Err(e);
            }
        }
        self.metrics.op("fork", start.elapsed());
        self.out(id)
    }

    fn mount(
        &self,
        engine: Engine,
        id: WorkspaceId,
        path: &Path,
        drop_on_unmount: bool,
    ) -> ApiResult<()> {
        let mount = self.engines.mount(engine, id, path)?;
        let top = drop_on_unmount.then(|| Mutex::new(top_mount(path)));
        self.mounts.lock().insert(
            id,
            Arc::new(Mounted {
                mount,
                mountpoint: path.to_path_buf(),
                top,
            }),
        );
        Ok(())
    }

    /// Drops the workspaces that live as long as their mount and whose mount is gone
    /// (`umount DIR`): what is left of their mount stack is detached and the workspace
    /// deleted, as `DELETE /v1/workspaces/{id}` does. Returns how many.
    pub fn drop_unmounted(&self) -> usize {
        let watched: Vec<(WorkspaceId, Arc<Mounted>)> = self
            .mounts
            .lock()
            .iter()
            .filter(|(_, m)| m.top.is_some())
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        let mut dropped = 0;
        for (id, m) in watched {
            let gone = m.top.as_ref().is_some_and(|top| {
                let top = top.lock();
                top.is_some_and(|t| !mount_exists(t))
            });
            if gone {
                tracing::info!(workspace = %id, mountpoint = %m.mountpoint.display(), "unmounted from outside: the workspace is dropped");
                drop(m);
                match self.delete(id) {
                    Ok(()) => dropped += 1,
                    Err(e) => {
                        tracing::warn!(workspace = %id, error = %e.message, "could not drop an unmounted workspace")
                    }
                }
            }
        }
        dropped
    }

    /// One workspace.
    pub fn get(&self, id: WorkspaceId) -> ApiResult<WorkspaceOut> {
        self.out(id)
    }

    /// Every workspace.
    pub fn list(&self) -> ApiResult<Vec<WorkspaceOut>> {
        let mut out = Vec::new();
        for r in self.repo.workspaces()? {
            match self.out(r.id) {
                Ok(w) => out.push(w),
                // Deleted between the listing and its lookup (an unmount from outside
                // drops a `drop_on_unmount` workspace at any moment): not listed.
                Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Snapshots a workspace (mounted or not).
    pub fn snapshot(&self, id: WorkspaceId, req: SnapshotRequest) -> ApiResult<Snapshot> {
        let start = Instant::now();
        let mounted = self.mounts.lock().get(&id).cloned();
        let snap = match mounted {
            Some(m) => m.mount.snapshot_with(req)?,
            None => {
                self.unmounted_fuse(id)?;
                self.repo.open_workspace(id)?.snapshot_with(req)?
            }
        };
        self.metrics.op("snapshot", start.elapsed());
        Ok(snap)
    }

    /// Merges snapshot `b` into `a` (a new child of `a`) and, with `into`, checks that
    /// workspace out to the merge. A workspace with uncommitted changes is refused
    /// before anything is written.
    pub fn merge(
        &self,
        a: SnapshotId,
        b: SnapshotId,
        req: SnapshotRequest,
        into: Option<WorkspaceId>,
    ) -> ApiResult<Snapshot> {
        let start = Instant::now();
        if let Some(w) = into
            && self.out(w)?.dirty
        {
            return Err(helios_snapshot::Error::Dirty(w).into());
        }
        let merged = self.repo.merge(a, b, req)?;
        self.metrics.op("merge", start.elapsed());
        if let Some(w) = into {
            // Changes made between the check above and here are not discarded: the
            // checkout refuses (409 dirty) and the merge snapshot stays, unused.
            self.checkout(w, merged.id, false)?;
        }
        Ok(merged)
    }

    /// Switches a workspace to another snapshot in place.
    pub fn checkout(
        &self,
        id: WorkspaceId,
        snap: SnapshotId,
        discard: bool,
    ) -> ApiResult<WorkspaceOut> {
        let start = Instant::now();
        let mounted = self.mounts.lock().get(&id).cloned();
        match mounted {
            Some(m) => match &m.top {
                Some(top) => {
                    let mut top = top.lock();
                    let done = m.mount.checkout(snap, discard);
                    *top = top_mount(&m.mountpoint);
                    done?
                }
                None => m.mount.checkout(snap, discard)?,
            },
            None => {
                self.unmounted_fuse(id)?;
                self.repo.open_workspace(id)?.checkout(snap, discard)?;
            }
        }
        self.metrics.op("checkout", start.elapsed());
        self.out(id)
    }

    /// Refuses to work on an unmounted overlay workspace: its files are its upperdir,
    /// which only its engine reads.
    fn unmounted_fuse(&self, id: WorkspaceId) -> ApiResult<()> {
        match engine_of(&self.repo.workspace_record(id)?) {
            Engine::Fuse => Ok(()),
            Engine::Overlay => Err(ApiError::conflict(
                "not_mounted",
                format!("overlay workspace {id} is not mounted (see the daemon's log for why)"),
            )),
        }
    }

    /// Unmounts and deletes a workspace.
    pub fn delete(&self, id: WorkspaceId) -> ApiResult<()> {
        self.repo.workspace_record(id)?;
        let mounted = self.mounts.lock().remove(&id);
        if let Some(m) = mounted {
            match Arc::try_unwrap(m) {
                // A busy mount (a process works in it) is detached lazily: it is gone for
                // new lookups, and the workspace goes with it.
                Ok(m) => {
                    if let Err(e) = m.mount.unmount() {
                        tracing::warn!(workspace = %id, error = %e, "unmounted lazily");
                    }
                }
                Err(m) => drop(m),
            }
        }
        self.repo.delete_workspace(id)?;
        Ok(())
    }

    /// Mounts every persisted workspace again (daemon start). A stale FUSE mount left by
    /// a crashed daemon is detached first. Failures are logged, not fatal.
    pub fn restore(&self) -> ApiResult<usize> {
        let mut n = 0;
        for rec in self.repo.workspaces()? {
            let Some(path) = mountpoint_of(&rec) else {
                continue;
            };
            // An overlay workspace leaves a stack of mounts (and a dead FUSE lower).
            let mut stale = 0;
            while is_mounted(&path) && stale < 8 {
                stale += 1;
                tracing::warn!(mountpoint = %path.display(), "detaching a stale mount");
                if let Err(e) = helios_fs::detach(&path) {
                    tracing::error!(mountpoint = %path.display(), error = %e, "could not detach");
                    break;
                }
            }
            if is_mounted(&path) {
                continue;
            }
            let result = self.mount(engine_of(&rec), rec.id, &path, drop_on_unmount(&rec));
            match result {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::error!(workspace = %rec.id, mountpoint = %path.display(), error = %e.message, "could not mount again")
                }
            }
        }
        Ok(n)
    }

    /// Saves every workspace's uncommitted changes and unmounts everything (shutdown).
    pub fn shutdown(&self) {
        let mounts: Vec<(WorkspaceId, Arc<Mounted>)> = self.mounts.lock().drain().collect();
        for (id, m) in mounts {
            if let Err(e) = m.mount.save() {
                tracing::error!(workspace = %id, error = %e, "could not save uncommitted changes");
            }
            match Arc::try_unwrap(m) {
                Ok(m) => {
                    if let Err(e) = m.mount.unmount() {
                        tracing::error!(workspace = %id, error = %e, "unmount failed");
                    }
                }
                Err(m) => drop(m),
            }
        }
        self.engines.shutdown();
        if let Err(e) = self.repo.close() {
            tracing::error!(error = %e, "closing the store failed");
        }
    }

    /// Number of mounted workspaces.
    pub fn mounted(&self) -> usize {
        self.mounts.lock().len()
    }
}
