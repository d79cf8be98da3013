//! The overlay engine: a workspace is a kernel overlayfs mount, so every data and
//! metadata operation of the agent runs in the kernel. Its lower layer (`Lowers`: one
//! per snapshot, shared by every workspace over it) is the snapshot's native directory
//! tree (`native`: imports, warmed and heavily read snapshots), else a delta over a
//! native one (`delta`: written in O(changes)), else a read-only helios FUSE view of the
//! snapshot (mounted in O(1) of the tree's size); its upperdir and workdir live in the
//! workspace's directory. A snapshot scans the upperdir into an
//! edit list over the lower snapshot (`scan`) and commits it through the core's one
//! commit path. A checkout slides a new overlay in under the visible one
//! (`MOVE_MOUNT_BENEATH`) and detaches the old one: one atomic switch for every new path
//! lookup at the mountpoint.
//!
//! Layers on disk: `<workspace dir>/overlay/<gen>.<lower>/{upper,work}`, `<lower>` the
//! lower snapshot's id (`empty` for none). The record's `lower` names the layer in use;
//! a restart mounts the newest layer over that snapshot again.
//!
//! Containers: the first overlay mounted at a mountpoint (the anchor) is made a shared
//! mount and stays mounted under the others for the workspace's life; each checkout puts
//! the new overlay on the anchor and detaches the previous one. A bind of the mountpoint
//! with slave (or shared) propagation made while the anchor was on top (bwrap binds are
//! slaves; podman needs `:rslave`) therefore follows every checkout. A process's current
//! directory and open files keep what they opened, as with any replaced mount.

mod delta;
mod native;
mod scan;
#[allow(unsafe_code)] // raw syscalls of the new mount API, each with its SAFETY note
mod sys;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use helios_snapshot::{Repo, Snapshot, SnapshotId, WorkspaceId};
use nix::mount::MntFlags;
use parking_lot::Mutex;

use crate::engine::{Capabilities, Engine, MountedWorkspace};
use crate::mount::{Mount, MountOptions};
use crate::{Error, Result};

pub use native::Warmed;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |e| Error::Core(helios_snapshot::Error::io(context, e))
}

fn mount_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Mount { context, source }
}

fn key(id: Option<SnapshotId>) -> String {
    id.map_or_else(|| "empty".to_string(), |s| s.to_string())
}

/// The lower layer of one snapshot, shared by every overlay workspace over it: a
/// mounted read-only FUSE view (unmounted lazily, off the caller's thread, when the last
/// user lets go), a native directory tree whose stubs redirect to `data`, or a delta
/// directory stacked over the native lower of an ancestor (`below`).
#[derive(Debug)]
pub(crate) struct Lower {
    path: PathBuf,
    /// The data-only layer of a native lower.
    data: Option<PathBuf>,
    /// The native lower a delta stands on.
    below: Option<Arc<Lower>>,
    mount: Mutex<Option<Mount>>,
    /// Removed (in the background) when the last user lets go: a delta's directory.
    owned: bool,
}

impl Lower {
    /// The overlay's lower layers, top first (the data-only layer aside).
    fn layers(&self) -> Vec<&Path> {
        let mut out = vec![self.path.as_path()];
        if let Some(b) = &self.below {
            out.extend(b.layers());
        }
        out
    }

    /// What kind of lower layer this is, as the workspace resource says.
    fn kind(&self) -> &'static str {
        if self.below.is_some() {
            "delta"
        } else if self.data.is_some() {
            "native"
        } else {
            "view"
        }
    }

    /// FUSE requests this view has served (0 for a native lower).
    fn served(&self) -> u64 {
        self.mount
            .lock()
            .as_ref()
            .map_or(0, |m| m.requests().iter().map(|(_, n)| n).sum())
    }
}

impl Drop for Lower {
    fn drop(&mut self) {
        if self.owned {
            remove_later(self.path.clone());
        }
        if let Some(m) = self.mount.lock().take() {
            // A detached overlay that a process still uses holds this view: unmounting
            // then waits for the kernel to release it, so not on the caller's thread.
            let path = self.path.clone();
            let _ = std::thread::Builder::new()
                .name("helios-lower-drop".into())
                .spawn(move || {
                    drop(m);
                    let _ = std::fs::remove_dir(&path);
                });
        }
    }
}

/// The lower layers of a repository: one read-only FUSE view per snapshot in use, under
/// `<state>/lower/<snapshot>`.
#[derive(Debug)]
pub struct Lowers {
    repo: Arc<Repo>,
    /// The state dir, absolute (mount options and mountinfo want one spelling).
    state: PathBuf,
    dir: PathBuf,
    opts: MountOptions,
    open: Mutex<HashMap<Option<SnapshotId>, Weak<Lower>>>,
    /// The views used last stay mounted while no workspace uses them (a search tree
    /// returns to the same nodes: a checkout back to one then needs no new mount).
    recent: Mutex<std::collections::VecDeque<Arc<Lower>>>,
    natives: Arc<native::Natives>,
    deltas: delta::Deltas,
}

/// How many views stay mounted unused (each is a FUSE session with its threads).
const RECENT_VIEWS: usize = 16;

impl Lowers {
    /// The lower layers of `repo`; stale views left by a killed daemon are detached.
    pub fn new(repo: Arc<Repo>, opts: &MountOptions) -> Lowers {
        let state = std::fs::canonicalize(repo.dir()).unwrap_or_else(|_| repo.dir().to_path_buf());
        let dir = state.join("lower");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let _ = nix::mount::umount2(&e.path(), MntFlags::MNT_DETACH);
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let opts = MountOptions {
            journal_interval: None,
            ..opts.clone()
        };
        Lowers {
            natives: native::Natives::new(repo.clone(), &state),
            deltas: delta::Deltas::new(repo.clone(), &state),
            repo,
            state,
            dir,
            opts,
            open: Mutex::new(HashMap::new()),
            recent: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Makes forks of snapshot `id` fast: every file of it in the materialized-file
    /// cache and, where the host allows, a native lower layer ready for new overlay
    /// mounts over it. Runs on the caller's thread.
    pub fn warm(&self, id: SnapshotId) -> Result<Warmed> {
        self.repo.snapshot(id)?;
        self.natives.warm(id)
    }

    /// Waits (up to `timeout`) for a background build of snapshot `id`'s native lower
    /// layer; true when one is ready.
    pub fn wait_native(&self, id: SnapshotId, timeout: std::time::Duration) -> bool {
        self.natives.wait(id, timeout)
    }

    pub(crate) fn disable_natives(&self, why: &str) {
        self.natives
            .set_usable(Err(format!("the overlay engine is off: {why}")));
    }

    /// Why native lower layers cannot serve here, if they cannot.
    pub fn native_unavailable(&self) -> Option<String> {
        self.natives.unusable()
    }

    /// Unmounts the views no workspace uses (a clean stop of the daemon).
    pub fn shutdown(&self) {
        self.deltas.shutdown();
        let recent: Vec<Arc<Lower>> = self.recent.lock().drain(..).collect();
        for l in recent {
            if let Ok(l) = Arc::try_unwrap(l) {
                let mount = l.mount.lock().take();
                if let Some(m) = mount {
                    let _ = m.unmount();
                    let _ = std::fs::remove_dir(&l.path);
                }
            }
        }
    }

    fn touch(&self, l: &Arc<Lower>) {
        let mut recent = self.recent.lock();
        recent.retain(|r| !Arc::ptr_eq(r, l));
        recent.push_front(l.clone());
        recent.truncate(RECENT_VIEWS);
    }

    /// The lower layer of snapshot `id`: its native one if ready, else a delta over
    /// an ancestor's native one, else its view (mounting it if no workspace uses it
    /// yet).
    pub(crate) fn get(&self, id: Option<SnapshotId>) -> Result<Arc<Lower>> {
        let mut import = false;
        if let Some(id) = id {
            if let Some(l) = self.natives.get(id) {
                return Ok(l);
            }
            let parent = self.repo.snapshot(id)?.parent;
            match self.deltas.get(id, parent, &self.natives) {
                Ok(Some(l)) => return Ok(l),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(snapshot = %id, error = %e, "could not write a delta lower layer; its view serves");
                }
            }
            // The root of a search: its descendants' deltas stand on its native lower.
            import = parent.is_none();
        }
        let mut open = self.open.lock();
        if let Some(l) = open.get(&id).and_then(Weak::upgrade) {
            drop(open);
            if let Some(id) = id {
                // Forked again, over a view its workspaces read much of: a native lower
                // pays for itself.
                self.natives.note_view(id, l.served(), import);
            }
            self.touch(&l);
            return Ok(l);
        }
        if let Some(id) = id {
            self.natives.note_view(id, 0, import);
        }
        // A path of its own: the unmount of a released view runs in the background and
        // must never hit a newer view of the same snapshot.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("{}-{n}", key(id)));
        // Left mounted by a daemon that was killed.
        let _ = nix::mount::umount2(&path, MntFlags::MNT_DETACH);
        std::fs::create_dir_all(&path).map_err(io(format!("create {}", path.display())))?;
        let view = self.repo.view(id)?;
        let mount = Mount::fuse(view, &path, &self.opts)?;
        let l = Arc::new(Lower {
            path,
            data: None,
            below: None,
            mount: Mutex::new(Some(mount)),
            owned: false,
        });
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(id, Arc::downgrade(&l));
        drop(open);
        self.touch(&l);
        Ok(l)
    }
}

/// Checks that this process can mount an overlay over a FUSE view with its upperdir in
/// the state dir (privilege, kernel support, `trusted.*` xattrs, the new mount API),
/// by doing it once. `Err` says why not.
pub fn probe(lowers: &Lowers) -> std::result::Result<(), String> {
    let dir = lowers.state.join("overlay-probe");
    let _ = nix::mount::umount2(&dir.join("m"), MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&dir);
    // Mounts an overlay of `lower` (with data-only layer `data`) and unmounts it.
    let mount_once = |lower: &Path, data: Option<&Path>, what: &str| -> Result<()> {
        sys::mount_isolated(
            &[lower],
            data,
            &dir.join("u"),
            &dir.join("w"),
            &dir.join("m"),
            false,
        )
        .map_err(mount_err(what))?;
        let unmounted = nix::mount::umount2(&dir.join("m"), MntFlags::empty());
        unmounted.map_err(|e| mount_err("unmount the probe")(e.into()))
    };
    let result = (|| -> Result<()> {
        for d in ["u", "w", "m"] {
            std::fs::create_dir_all(dir.join(d)).map_err(io("create the probe"))?;
        }
        let lower = lowers.get(None)?;
        mount_once(&lower.path, None, "mount an overlay")
    })();
    if result.is_ok() {
        // Native lowers: a data-only layer without metacopy copy-ups.
        let native = (|| -> Result<()> {
            let data = lowers.natives.data_dir();
            for d in [dir.join("n"), data.to_path_buf()] {
                std::fs::create_dir_all(&d).map_err(io("create the probe"))?;
            }
            mount_once(
                &dir.join("n"),
                Some(data),
                "mount an overlay with a data-only layer",
            )
        })();
        let forced =
            std::env::var_os("HELIOS_NO_NATIVE_LOWER").is_some_and(|v| !v.is_empty() && v != "0");
        lowers.natives.set_usable(if forced {
            Err("HELIOS_NO_NATIVE_LOWER is set".into())
        } else {
            native.map_err(|e| e.to_string())
        });
    }
    let _ = nix::mount::umount2(&dir.join("m"), MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(|e| e.to_string())
}

/// One overlay layer of a workspace: its directory, and the lower view it stands on.
#[derive(Debug)]
struct Layer {
    dir: PathBuf,
    lower_id: Option<SnapshotId>,
    view: Arc<Lower>,
}

impl Layer {
    fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    fn clean_file(&self) -> PathBuf {
        self.dir.join("clean")
    }
}

#[derive(Debug)]
struct State {
    base: Option<SnapshotId>,
    /// The anchor (the first overlay mounted at the mountpoint) and, after a checkout,
    /// the overlay on top of it that is in use.
    anchor: Layer,
    current: Option<Layer>,
    next_gen: u64,
    /// The upper's fingerprint when it last matched `base`.
    clean_sig: Option<u64>,
    /// Contents the last snapshots stored for the current layer's upper files: a
    /// snapshot rehashes only files written since.
    known: scan::Known,
    /// The current layer's upper as the last snapshot's scan saw it, and that snapshot:
    /// the next snapshot commits only what changed since, over it.
    prev: Option<(SnapshotId, scan::Prev)>,
    mounted: bool,
}

impl State {
    fn layer(&self) -> &Layer {
        self.current.as_ref().unwrap_or(&self.anchor)
    }
}

/// How often a snapshot scans the upper again when an entry vanished under it in a way
/// the scan and commit do not skip.
const SCAN_ATTEMPTS: u32 = 4;

/// How many upper files' contents a workspace remembers between snapshots.
const KNOWN_MAX: usize = 1 << 20;

/// A workspace served by the overlay engine.
#[derive(Debug)]
pub struct OverlayWorkspace {
    repo: Arc<Repo>,
    lowers: Arc<Lowers>,
    id: WorkspaceId,
    mountpoint: PathBuf,
    layers: PathBuf,
    st: Mutex<State>,
}

fn parse_layer(name: &str) -> Option<(u64, Option<SnapshotId>)> {
    let (gen_, lower) = name.split_once('.')?;
    let gen_ = gen_.parse().ok()?;
    let lower = match lower {
        "empty" => None,
        s => Some(s.parse().ok()?),
    };
    Some((gen_, lower))
}

impl OverlayWorkspace {
    /// Mounts workspace `id` at `mountpoint`: over the layer its record names (a
    /// restart finds the upperdir it left), or a new layer over its base.
    pub fn mount(
        repo: Arc<Repo>,
        lowers: Arc<Lowers>,
        id: WorkspaceId,
        mountpoint: &Path,
    ) -> Result<OverlayWorkspace> {
        let mut rec = repo.workspace_record(id)?;
        if rec.read_only {
            return Err(Error::Unsupported(
                "read-only workspaces are served by the fuse engine".into(),
            ));
        }
        if rec.head.is_some() {
            return Err(Error::Unsupported(format!(
                "workspace {id} has uncommitted changes saved by the fuse engine; mount it with fuse"
            )));
        }
        let layers = repo.workspace_dir(id).join("overlay");
        std::fs::create_dir_all(&layers).map_err(io(format!("create {}", layers.display())))?;
        let layers =
            std::fs::canonicalize(&layers).map_err(io(format!("resolve {}", layers.display())))?;
        let mut found: Vec<(u64, Option<SnapshotId>, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(&layers)
            .map_err(io(format!("read {}", layers.display())))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((g, l)) = parse_layer(&name) {
                found.push((g, l, e.path()));
            } else if name.starts_with(BUILDING) {
                // Left by a crash while a checkout built it.
                remove_later(e.path());
            }
        }
        found.sort_by_key(|f| f.0);

        let next_gen = found.last().map_or(0, |f| f.0 + 1);
        let keep = found.iter().rev().find(|f| f.1 == rec.lower).cloned();
        if keep.is_none() && rec.lower != rec.base {
            // A new workspace (or one whose layer never got written): a fresh layer over
            // its base. An existing one has a layer over the lower its record names.
            rec = repo.rebase_workspace(id, rec.base, rec.base)?;
        }
        for f in &found {
            if keep.as_ref().is_none_or(|k| k.2 != f.2) {
                remove_later(f.2.clone());
            }
        }
        let lower = lowers.get(rec.lower)?;
        let (anchor, clean_sig, next_gen) = match keep {
            Some((_, lower_id, dir)) => {
                let layer = Layer {
                    dir,
                    lower_id,
                    view: lower,
                };
                let clean = std::fs::read_to_string(layer.clean_file())
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                (layer, clean, next_gen)
            }
            None => {
                let layer = new_layer(&repo, &layers, next_gen, rec.lower, lower)?;
                (layer, None, next_gen + 1)
            }
        };
        sys::mount_isolated(
            &anchor.view.layers(),
            anchor.view.data.as_deref(),
            &anchor.upper(),
            &anchor.work(),
            mountpoint,
            false,
        )
        .map_err(mount_err(format!(
            "mount an overlay at {}",
            mountpoint.display()
        )))?;
        // Binds of the mountpoint made with slave propagation follow later checkouts.
        if let Err(e) = nix::mount::mount(
            None::<&str>,
            mountpoint,
            None::<&str>,
            nix::mount::MsFlags::MS_SHARED,
            None::<&str>,
        ) {
            tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "could not make the workspace a shared mount; binds will not follow checkouts");
        }
        let ws = OverlayWorkspace {
            repo,
            lowers,
            id,
            mountpoint: mountpoint.to_path_buf(),
            layers,
            st: Mutex::new(State {
                base: rec.base,
                anchor,
                current: None,
                next_gen,
                clean_sig,
                known: scan::Known::new(),
                prev: None,
                mounted: true,
            }),
        };
        {
            let mut st = ws.st.lock();
            if st.clean_sig.is_none() && rec.lower == rec.base && is_empty_dir(&st.anchor.upper()) {
                // A layer over the base with nothing in its upper is clean.
                st.clean_sig = Some(ws.sig(&st)?);
            }
        }
        Ok(ws)
    }

    fn sig(&self, st: &State) -> Result<u64> {
        Ok(scan::scan(
            &st.layer().upper(),
            false,
            &st.known,
            &scan::Prev::default(),
        )?
        .sig)
    }

    fn is_dirty(&self, st: &State) -> Result<bool> {
        Ok(match st.clean_sig {
            Some(clean) => self.sig(st)? != clean,
            None => true,
        })
    }

    fn record_clean(st: &mut State, sig: u64) {
        st.clean_sig = Some(sig);
        let _ = std::fs::write(st.layer().clean_file(), sig.to_string());
    }

    fn do_snapshot(&self, req: helios_snapshot::SnapshotRequest) -> Result<Snapshot> {
        let mut st = self.st.lock();
        // What the last snapshot's scan saw, while the workspace still stands on it.
        let prev = match st.prev.take() {
            Some((id, seen)) if Some(id) == st.base => seen,
            _ => scan::Prev::default(),
        };
        let layer = st.layer();
        // The agent may rename or delete files while the upper is scanned and read (no
        // freeze): an entry gone between the scan and the commit's read of it fails that
        // commit whole, and the scan is taken again.
        let mut attempt = 0;
        let (scan, s) = loop {
            attempt += 1;
            let result = scan::scan(&layer.upper(), true, &st.known, &prev).and_then(|scan| {
                // Only what changed since the last snapshot, over it, where that is
                // exact; else everything in the upper, over the lower layer.
                let (over, edits) = match &scan.changes {
                    Some(changes) => (st.base, changes),
                    None => (layer.lower_id, &scan.edits),
                };
                let s = self.repo.commit_edits_with(
                    over,
                    st.base,
                    edits,
                    req.clone(),
                    Some(self.id),
                )?;
                Ok((scan, s))
            });
            match result {
                Err(Error::Core(helios_snapshot::Error::Io { source, .. }))
                    if source.kind() == std::io::ErrorKind::NotFound && attempt < SCAN_ATTEMPTS =>
                {
                    std::thread::yield_now();
                }
                other => break other?,
            }
        };
        st.base = Some(s.id);
        Self::record_clean(&mut st, scan.sig);
        // Learn what the commit stored for the files it read, keyed by their stat at
        // the scan (a file written after it has another ctime, and is read again).
        if scan.fresh.len() + st.known.len() > KNOWN_MAX {
            st.known.clear();
        }
        let mut seen = scan.seen;
        for (path, key) in scan.fresh {
            match self.repo.entry_at(s.id, &path) {
                Ok(Some(kind @ helios_snapshot::tree::EntryKind::File { .. })) => {
                    if let helios_snapshot::tree::EntryKind::File { content, .. } = &kind {
                        st.known.insert(path.clone(), (key, *content));
                    }
                    // The next scan reuses the stored entry while the file's stat stays.
                    if let Some(e) = seen.get_mut(&path) {
                        e.edit = helios_snapshot::Edit::Entry(kind);
                    }
                }
                _ => {
                    st.known.remove(&path);
                    // Not stored as scanned (gone, or replaced meanwhile): read it again.
                    seen.remove(&path);
                }
            }
        }
        if seen.len() <= KNOWN_MAX {
            st.prev = Some((s.id, seen));
        }
        Ok(s)
    }

    fn do_checkout(&self, id: SnapshotId, discard: bool) -> Result<()> {
        let mut st = self.st.lock();
        if !discard && self.is_dirty(&st)? {
            return Err(helios_snapshot::Error::Dirty(self.id).into());
        }
        self.repo.snapshot(id)?;
        let lower = self.lowers.get(Some(id))?;
        let layer = new_layer(&self.repo, &self.layers, st.next_gen, Some(id), lower)?;
        st.next_gen += 1;
        let old = (st.base, st.layer().lower_id);
        // The record first: a crash after it mounts the new layer at the restart.
        if let Err(e) = self.repo.rebase_workspace(self.id, Some(id), Some(id)) {
            remove_later(layer.dir);
            return Err(e.into());
        }
        let beneath = st.current.is_some();
        let attached = sys::mount_isolated(
            &layer.view.layers(),
            layer.view.data.as_deref(),
            &layer.upper(),
            &layer.work(),
            &self.mountpoint,
            beneath,
        );
        if let Err(e) = attached {
            let _ = self.repo.rebase_workspace(self.id, old.0, old.1);
            remove_later(layer.dir);
            return Err(mount_err(format!(
                "mount an overlay at {}",
                self.mountpoint.display()
            ))(e));
        }
        if beneath {
            // The previous layer was on top: detach it, and the new one shows.
            if let Err(e) = nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH) {
                tracing::error!(mountpoint = %self.mountpoint.display(), error = %e, "could not detach the previous overlay");
            }
        }
        st.known.clear();
        st.prev = None;
        if let Some(prev) = st.current.replace(layer) {
            remove_later(prev.dir.clone());
        }
        st.base = Some(id);
        let sig = self.sig(&st)?;
        Self::record_clean(&mut st, sig);
        Ok(())
    }

    fn stop(&self) -> Result<()> {
        let mut st = self.st.lock();
        if !st.mounted {
            return Ok(());
        }
        st.mounted = false;
        let layers = 1 + usize::from(st.current.is_some());
        let mut busy = None;
        for _ in 0..layers {
            if let Err(e) = nix::mount::umount2(&self.mountpoint, MntFlags::empty()) {
                busy = Some(e);
                let _ = nix::mount::umount2(&self.mountpoint, MntFlags::MNT_DETACH);
            }
        }
        match busy {
            Some(e) => Err(mount_err(format!("unmount {}", self.mountpoint.display()))(
                e.into(),
            )),
            None => Ok(()),
        }
    }
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}

/// A new layer directory over `lower`, its upper root carrying the lower root's
/// attributes (the overlay's root shows the upper root's).
fn new_layer(
    repo: &Repo,
    layers: &Path,
    gen_: u64,
    lower_id: Option<SnapshotId>,
    lower: Arc<Lower>,
) -> Result<Layer> {
    // Built under a name no mount takes (`parse_layer` refuses it), then renamed: a crash
    // midway leaves no layer that a restart would mount half made.
    let name = format!("{gen_}.{}", key(lower_id));
    let building = layers.join(format!("{BUILDING}{name}"));
    let _ = std::fs::remove_dir_all(&building);
    let layer = Layer {
        dir: building,
        lower_id,
        view: lower,
    };
    let built = build_layer(repo, &layer).and_then(|()| {
        let dir = layers.join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&layer.dir, &dir).map_err(io(format!("rename {}", layer.dir.display())))?;
        Ok(dir)
    });
    match built {
        Ok(dir) => Ok(Layer { dir, ..layer }),
        Err(e) => {
            remove_later(layer.dir);
            Err(e)
        }
    }
}

/// Makes `layer`'s upper and work directories, the upper root with the lower root's
/// attributes.
fn build_layer(repo: &Repo, layer: &Layer) -> Result<()> {
    let lower_id = layer.lower_id;
    for d in [layer.upper(), layer.work()] {
        std::fs::create_dir_all(&d).map_err(io(format!("create {}", d.display())))?;
    }
    // From the store, not by a stat of the view: this process must never wait on a view
    // it serves itself (see `sys::mount_isolated`).
    let a = repo.root_attrs(lower_id)?;
    let upper = layer.upper();
    std::os::unix::fs::chown(&upper, Some(a.uid), Some(a.gid))
        .map_err(io(format!("chown {}", upper.display())))?;
    std::fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(a.mode))
        .map_err(io(format!("chmod {}", upper.display())))?;
    for (name, value) in &a.xattrs {
        use std::os::unix::ffi::OsStrExt;
        xattr::set(&upper, std::ffi::OsStr::from_bytes(name), value)
            .map_err(io(format!("set xattrs of {}", upper.display())))?;
    }
    Ok(())
}

/// The name prefix of a layer directory being built (`new_layer`).
const BUILDING: &str = ".building-";

/// Removes a layer directory off the caller's thread (deleting many files is slow on
/// some disks).
fn remove_later(dir: PathBuf) {
    let _ = std::thread::Builder::new()
        .name("helios-layer-rm".into())
        .spawn(move || {
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove an old overlay layer");
            }
        });
}

impl MountedWorkspace for OverlayWorkspace {
    fn engine(&self) -> Engine {
        Engine::Overlay
    }

    fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn lower(&self) -> Option<&'static str> {
        let st = self.st.lock();
        Some(st.layer().view.kind())
    }

    fn base(&self) -> Option<SnapshotId> {
        self.st.lock().base
    }

    fn dirty(&self) -> bool {
        let st = self.st.lock();
        self.is_dirty(&st).unwrap_or(true)
    }

    fn snapshot_with(&self, req: helios_snapshot::SnapshotRequest) -> Result<Snapshot> {
        self.do_snapshot(req)
    }

    fn checkout(&self, id: SnapshotId, discard: bool) -> Result<()> {
        self.do_checkout(id, discard)
    }

    fn save(&self) -> Result<()> {
        // The upperdir is the workspace's state; make it durable.
        let st = self.st.lock();
        let upper = st.layer().upper();
        let f = std::fs::File::open(&upper).map_err(io(format!("open {}", upper.display())))?;
        nix::unistd::syncfs(&f).map_err(|e| io(format!("syncfs {}", upper.display()))(e.into()))?;
        Ok(())
    }

    fn unmount(self: Box<Self>) -> Result<()> {
        self.stop()
    }
}

impl Drop for OverlayWorkspace {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
