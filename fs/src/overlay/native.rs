//! Native lower layers: a snapshot written out as a plain directory tree on the state
//! dir's filesystem, for the snapshots that are forked often. A FUSE view is ready in
//! O(1) but every first lookup and read of the lower tree costs a round trip to the
//! daemon; a native lower is read by the kernel alone, at the speed of a hand-mounted
//! overlay, but costs O(tree) to build. So a view serves at once, and when a snapshot's
//! lower is asked for again after its view served many requests (`HOT_REQUESTS`), or when
//! a caller warms it, a native one is built in the background and serves every later
//! mount over that snapshot.
//!
//! A native lower holds the bytes of small files only (`INLINE_MAX`); the rest follow
//! composefs' layout, on a plain directory instead of an EROFS image: each larger file
//! is a sparse stub with the file's attributes and `trusted.overlay.metacopy` plus
//! `trusted.overlay.redirect` naming its bytes in the materialized-file cache, which the
//! overlay mounts as a data-only layer (`datadir+`). Every snapshot and fork with the
//! same content shares one cache file and its page cache, and a copy-up copies the data
//! (the upper never holds metacopy files, so the scan is the same as over a view).
//!
//! On disk: `<state>/native/<snapshot>` once complete (built in `.build-<snapshot>-<n>`,
//! synced, renamed); a later daemon reuses it after checking every cache file it
//! names against its hash (in the background, once per process; the inlined small
//! files are trusted like the upperdir).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use helios_snapshot::{Repo, SnapshotId};
use parking_lot::{Condvar, Mutex};

use super::{Lower, remove_later};
use crate::{Error, Result};

/// How many native lowers stay on disk (each costs an inode per path and the bytes of
/// its small files).
const KEEP: usize = 8;
/// Files up to this size are written into the native lower with their bytes: a stub's
/// redirect costs the kernel a lookup in the data-only layer and the stub's xattrs (an
/// xattr block of its own on ext4) on every cold access, which for a small file costs
/// more than its bytes (a cold `find -printf '%s'` over the 7.7k-file Python stdlib
/// took 3.9 s with every file a stub, hand-mounted overlayfs 0.29 s). 6,950 of its
/// files, 83 of its 250 MB, are this small.
const INLINE_MAX: u64 = 64 << 10;
/// A native lower is built for a snapshot whose lower is asked for again (a fork or a
/// checkout onto it) once its view has served this many FUSE requests: the workspaces
/// over it read much of the tree (a build, `git status`, a search), so the view's round
/// trips cost more than the build. A view that served little (an agent that touches a
/// few files of a large tree) is cheap, and an O(tree) build for every node a search
/// visits twice would load the disk for nothing (seen in the api bench: checkouts
/// alternating between two 10k-file snapshots went from 1.5 to 7.6 ms p50 while both
/// were being built).
const HOT_REQUESTS: u64 = 2000;
/// The how-many-th request for a snapshot's lower may start building a native one.
const HOT_AFTER: u32 = 2;
/// Builds queued at most (each costs O(tree)).
const MAX_PENDING: usize = 4;

const METACOPY: &str = "trusted.overlay.metacopy";
const REDIRECT: &str = "trusted.overlay.redirect";

/// What warming a snapshot did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Warmed {
    /// A native lower layer serves new overlay mounts over the snapshot.
    pub native: bool,
    /// Paths in the snapshot.
    pub paths: u64,
    /// Regular files with data (the large ones now in the materialized-file cache).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Time it took, microseconds (0 when it was ready already).
    pub micros: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Complete and checked in this process: id -> last use (a tick).
    ready: HashMap<SnapshotId, u64>,
    /// Complete on disk, left by an earlier process, not yet checked.
    unchecked: HashSet<SnapshotId>,
    /// Requests for a view of a snapshot, to spot the hot ones.
    uses: HashMap<SnapshotId, u32>,
    /// Queued for the builder, or being built.
    pending: HashSet<SnapshotId>,
    /// Failed in this process: not tried again.
    failed: HashSet<SnapshotId>,
    tick: u64,
}

/// The native lower layers of a repository.
#[derive(Debug)]
pub(crate) struct Natives {
    repo: Arc<Repo>,
    /// `<state>/native`.
    dir: PathBuf,
    /// The data-only layer: the materialized-file cache.
    data: PathBuf,
    st: Mutex<State>,
    /// Signalled when a build ends.
    built: Condvar,
    /// One build at a time (they compete with the agents for the disk).
    building: Mutex<()>,
    tx: Mutex<Option<mpsc::Sender<SnapshotId>>>,
    /// The native lowers mounts stand on now (eviction keeps them).
    open: Mutex<HashMap<SnapshotId, std::sync::Weak<Lower>>>,
    /// `Err`: why this host cannot mount a native lower (no data-only layers).
    usable: std::sync::OnceLock<std::result::Result<(), String>>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Natives {
    /// The native lowers under `state` (absolute); leftovers of builds that did not
    /// finish and lowers of deleted snapshots are removed in the background.
    pub(crate) fn new(repo: Arc<Repo>, state: &Path) -> Arc<Natives> {
        let dir = state.join("native");
        let mut st = State::default();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let id = name.to_str().and_then(|n| n.parse::<SnapshotId>().ok());
                match id {
                    Some(id) if repo.snapshot(id).is_ok() => {
                        st.unchecked.insert(id);
                    }
                    _ => remove_later(e.path()),
                }
            }
        }
        Arc::new(Natives {
            data: repo.file_cache_dir(),
            repo,
            dir,
            st: Mutex::new(st),
            built: Condvar::new(),
            building: Mutex::new(()),
            tx: Mutex::new(None),
            open: Mutex::new(HashMap::new()),
            usable: std::sync::OnceLock::new(),
        })
    }

    /// The data-only layer every native lower redirects to.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data
    }

    pub(crate) fn path(&self, id: SnapshotId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Records whether native lowers can be mounted here (the engine's probe).
    pub(crate) fn set_usable(&self, r: std::result::Result<(), String>) {
        if let Err(why) = &r {
            tracing::info!(reason = %why, "native lower layers are not available; lower layers are FUSE views");
        }
        let _ = self.usable.set(r);
    }

    fn usable(&self) -> bool {
        matches!(self.usable.get(), Some(Ok(())))
    }

    /// Why native lowers cannot serve here, if they cannot.
    pub(crate) fn unusable(&self) -> Option<String> {
        match self.usable.get() {
            Some(Ok(())) => None,
            Some(Err(why)) => Some(why.clone()),
            None => Some("not probed".into()),
        }
    }

    /// Whether the native lower of `id` is ready (not counting a use).
    pub(crate) fn is_ready(&self, id: SnapshotId) -> bool {
        self.usable() && self.st.lock().ready.contains_key(&id)
    }

    /// The snapshots with a ready native lower, most recently used first.
    pub(crate) fn ready_by_use(&self) -> Vec<SnapshotId> {
        if !self.usable() {
            return Vec::new();
        }
        let st = self.st.lock();
        let mut by_use: Vec<(u64, SnapshotId)> = st.ready.iter().map(|(id, t)| (*t, *id)).collect();
        by_use.sort_by(|a, b| b.cmp(a));
        by_use.into_iter().map(|(_, id)| id).collect()
    }

    /// The native lower of `id` if one is ready (counting the use).
    pub(crate) fn get(&self, id: SnapshotId) -> Option<Arc<Lower>> {
        if !self.usable() {
            return None;
        }
        // Under the state lock until the lower is in `open`: eviction (which holds it)
        // then sees it in use.
        let mut st = self.st.lock();
        st.tick += 1;
        let tick = st.tick;
        *st.ready.get_mut(&id)? = tick;
        let mut open = self.open.lock();
        if let Some(l) = open.get(&id).and_then(std::sync::Weak::upgrade) {
            return Some(l);
        }
        let l = Arc::new(Lower {
            path: self.path(id),
            data: Some(self.data.clone()),
            below: None,
            mount: Mutex::new(None),
            owned: false,
        });
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(id, Arc::downgrade(&l));
        Some(l)
    }

    /// Notes that a view of `id` was asked for; the hot ones (and with `eager` every
    /// one: an imported snapshot, the base its descendants' deltas stand on) get a
    /// native lower built in the background.
    pub(crate) fn note_view(self: &Arc<Self>, id: SnapshotId, served: u64, eager: bool) {
        if !self.usable() {
            return;
        }
        let queue = {
            let mut st = self.st.lock();
            if st.uses.len() > 4096 {
                st.uses.clear();
            }
            let n = st.uses.entry(id).or_default();
            *n += 1;
            let hot =
                eager || (*n >= HOT_AFTER && served >= HOT_REQUESTS) || st.unchecked.contains(&id);
            // A bounded queue: a search that forks every new node twice must not line
            // up O(tree) builds faster than they finish; later uses ask again.
            hot && st.pending.len() < MAX_PENDING
                && !st.pending.contains(&id)
                && !st.failed.contains(&id)
                && {
                    st.pending.insert(id);
                    true
                }
        };
        if queue {
            self.enqueue(id);
        }
    }

    fn enqueue(self: &Arc<Self>, id: SnapshotId) {
        let mut tx = self.tx.lock();
        if tx.is_none() {
            let (s, r) = mpsc::channel::<SnapshotId>();
            let me = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("helios-native".into())
                .spawn(move || {
                    while let Ok(id) = r.recv() {
                        let Some(n) = me.upgrade() else { return };
                        if let Err(e) = n.build(id) {
                            tracing::warn!(snapshot = %id, error = %e, "could not build a native lower layer; its view serves");
                        }
                    }
                });
            if spawned.is_err() {
                self.st.lock().pending.remove(&id);
                return;
            }
            *tx = Some(s);
        }
        if let Some(s) = tx.as_ref() {
            let _ = s.send(id);
        }
    }

    /// Makes a native lower of `id` ready now (building or checking it on this thread),
    /// and puts every file of `id` in the materialized-file cache. Where native lowers
    /// cannot serve, only the cache is filled (the FUSE engine's passthrough and the
    /// views read from it).
    pub(crate) fn warm(&self, id: SnapshotId) -> Result<Warmed> {
        if !self.usable() {
            let start = Instant::now();
            let s = self.repo.export_stubs(id, None, 0, &mut |_, _| Ok(()))?;
            return Ok(Warmed {
                native: false,
                paths: s.paths,
                files: s.stubs,
                bytes: s.bytes,
                micros: start.elapsed().as_micros() as u64,
            });
        }
        self.build(id)
    }

    /// Builds (or checks) the native lower of `id`.
    fn build(&self, id: SnapshotId) -> Result<Warmed> {
        let _one = self.building.lock();
        let start = Instant::now();
        let unchecked = {
            let mut st = self.st.lock();
            if st.ready.contains_key(&id) {
                st.pending.remove(&id);
                return Ok(Warmed {
                    native: true,
                    ..Warmed::default()
                });
            }
            st.unchecked.contains(&id)
        };
        let result = if unchecked {
            // Built by an earlier process: its stubs stand, the cache files they name
            // are checked against their hashes (and rebuilt where damaged).
            self.repo
                .export_stubs(id, None, INLINE_MAX, &mut |_, _| Ok(()))
                .map_err(Error::from)
        } else {
            self.write(id)
        };
        let mut st = self.st.lock();
        st.pending.remove(&id);
        st.unchecked.remove(&id);
        let stats = match result {
            Ok(s) => s,
            Err(e) => {
                st.failed.insert(id);
                drop(st);
                self.built.notify_all();
                return Err(e);
            }
        };
        st.tick += 1;
        let tick = st.tick;
        st.ready.insert(id, tick);
        drop(st);
        self.built.notify_all();
        self.evict();
        tracing::info!(snapshot = %id, paths = stats.paths, stubs = stats.stubs, inlined = stats.inlined, ms = start.elapsed().as_millis() as u64, "native lower layer ready");
        Ok(Warmed {
            native: true,
            paths: stats.paths,
            files: stats.stubs + stats.inlined,
            bytes: stats.bytes,
            micros: start.elapsed().as_micros() as u64,
        })
    }

    fn write(&self, id: SnapshotId) -> Result<helios_snapshot::StubStats> {
        let final_path = self.path(id);
        let tmp = self.dir.join(format!(
            ".build-{id}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |what: &str, p: &Path| {
            let context = format!("{what} {}", p.display());
            move |e: std::io::Error| Error::Core(helios_snapshot::Error::io(context, e))
        };
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let data = self.data.clone();
        let result = (|| {
            let stats =
                self.repo
                    .export_stubs(id, Some(&tmp), INLINE_MAX, &mut |stub, cached| {
                        let rel = cached.strip_prefix(&data).map_err(|_| {
                            helios_snapshot::Error::io(
                                format!("{} is outside the file cache", cached.display()),
                                std::io::Error::from_raw_os_error(libc::EINVAL),
                            )
                        })?;
                        let redirect = Path::new("/").join(rel);
                        use std::os::unix::ffi::OsStrExt;
                        xattr::set(stub, METACOPY, b"")
                            .and_then(|()| {
                                xattr::set(stub, REDIRECT, redirect.as_os_str().as_bytes())
                            })
                            .map_err(|e| {
                                helios_snapshot::Error::io(format!("mark {}", stub.display()), e)
                            })
                    })?;
            let f = std::fs::File::open(&tmp).map_err(io("open", &tmp))?;
            nix::unistd::syncfs(&f).map_err(|e| io("syncfs", &tmp)(e.into()))?;
            std::fs::rename(&tmp, &final_path).map_err(io("rename", &tmp))?;
            Ok(stats)
        })();
        if result.is_err() {
            remove_later(tmp);
        }
        result
    }

    /// Removes the least recently used native lowers beyond `KEEP` that no mount
    /// stands on.
    fn evict(&self) {
        let in_use = |id: SnapshotId| {
            self.open
                .lock()
                .get(&id)
                .is_some_and(|w| w.strong_count() > 0)
        };
        let gone: Vec<SnapshotId> = {
            let mut st = self.st.lock();
            if st.ready.len() <= KEEP {
                return;
            }
            let mut by_age: Vec<(u64, SnapshotId)> =
                st.ready.iter().map(|(id, t)| (*t, *id)).collect();
            by_age.sort();
            let extra = st.ready.len() - KEEP;
            let gone: Vec<SnapshotId> = by_age
                .into_iter()
                .map(|(_, id)| id)
                .filter(|id| !in_use(*id))
                .take(extra)
                .collect();
            for id in &gone {
                st.ready.remove(id);
            }
            gone
        };
        for id in gone {
            let p = self.path(id);
            let doomed = self.dir.join(format!(
                ".gone-{id}-{}",
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            if std::fs::rename(&p, &doomed).is_ok() {
                remove_later(doomed);
            }
        }
    }

    /// Waits until no build of `id` is queued or running (tests, benchmarks).
    pub(crate) fn wait(&self, id: SnapshotId, timeout: std::time::Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.st.lock();
        while st.pending.contains(&id) {
            if self.built.wait_until(&mut st, deadline).timed_out() {
                return false;
            }
        }
        st.ready.contains_key(&id)
    }
}
