//! Delta lower layers: the lower layer of a snapshot that descends from one with a
//! native lower, as a small directory of what differs stacked over that native one.
//! A search forks a new snapshot at nearly every step; its native lower would cost
//! O(tree) and its FUSE view a round trip per first lookup and read. A delta costs
//! O(changes since the ancestor) to write and is then read by the kernel alone: the
//! overlay's lower layers are the delta (every entry of the snapshot that is not
//! exactly the ancestor's, with the directories on the paths to them; a whiteout for
//! each entry the snapshot dropped) over the ancestor's native lower over the
//! materialized-file cache. Two lower layers whatever the chain's depth: a delta is
//! always against a native lower, never against another delta.
//!
//! Regular files are written with their bytes: overlayfs without `metacopy=on` follows
//! a metacopy redirect only from the bottom lower layer into a data-only one (from a
//! higher layer it refuses: "refusing to follow metacopy origin"), and `metacopy=on`
//! would leave metacopy files in the upper for the scan to resolve. `LIMITS` bounds
//! what one delta may cost; a snapshot beyond them gets its view (and, once hot, a
//! native lower of its own, which its descendants then stand on).
//!
//! Deltas are a cache, not state: they live on a tmpfs the daemon mounts at
//! `<state>/delta` (`DELTA_TMPFS`; a delta's dozen directories and files cost 5-10 ms
//! to create on this VM's ext4 root disk, and microseconds in memory), and are gone
//! when the daemon starts again. Where no tmpfs can be mounted they are plain
//! directories there, removed at the next start.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use helios_snapshot::{DeltaLimits, Repo, SnapshotId};
use nix::mount::{MntFlags, MsFlags};
use parking_lot::Mutex;

use super::native::Natives;
use super::{Lower, remove_later};
use crate::Result;

/// What one delta may hold: a fork should cost milliseconds (about 1,000 small files
/// take ~10 ms to write on a tmpfs here), and the deltas kept fit `DELTA_TMPFS`.
const LIMITS: DeltaLimits = DeltaLimits {
    paths: 1024,
    bytes: 8 << 20,
};
/// The tmpfs the deltas live on (its size bounds their memory: `RECENT` unused deltas
/// at `LIMITS.bytes` each fill half of it).
const DELTA_TMPFS: &str = "size=1g,mode=0700";
/// How far up the snapshot chain a native ancestor is looked for first.
const GENERATIONS: usize = 16;
/// Deltas kept while no workspace uses them (a search returns to the same nodes).
const RECENT: usize = 64;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The delta lower layers of a repository, under `<state>/delta`.
#[derive(Debug)]
pub(crate) struct Deltas {
    repo: Arc<Repo>,
    dir: PathBuf,
    /// Whether `dir` is the daemon's tmpfs (mounted at the first delta).
    mounted: std::sync::OnceLock<bool>,
    open: Mutex<HashMap<SnapshotId, Weak<Lower>>>,
    recent: Mutex<VecDeque<Arc<Lower>>>,
    /// (snapshot, ancestor) pairs whose delta was over the limits: not tried again.
    too_big: Mutex<HashSet<(SnapshotId, SnapshotId)>>,
    /// One delta written at a time (two forks of one snapshot write it once).
    writing: Mutex<()>,
}

impl Deltas {
    /// The deltas under `state` (absolute); those an earlier process left are
    /// removed in the background.
    pub(crate) fn new(repo: Arc<Repo>, state: &std::path::Path) -> Deltas {
        let dir = state.join("delta");
        // The tmpfs of a daemon that was killed (detached: stale overlays may still
        // hold it), then whatever is left on disk.
        for _ in 0..16 {
            if nix::mount::umount2(&dir, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
        if dir.exists() {
            let gone = state.join(format!(
                ".delta-gone-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            if std::fs::rename(&dir, &gone).is_ok() {
                remove_later(gone);
            }
        }
        Deltas {
            mounted: std::sync::OnceLock::new(),
            repo,
            dir,
            open: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
            too_big: Mutex::new(HashSet::new()),
            writing: Mutex::new(()),
        }
    }

    /// Lets go of the deltas no workspace uses and detaches the tmpfs (a clean stop;
    /// overlays still mounted keep what they use).
    pub(crate) fn shutdown(&self) {
        self.recent.lock().clear();
        if self.mounted.get() == Some(&true) {
            let _ = nix::mount::umount2(&self.dir, MntFlags::MNT_DETACH);
        }
    }

    /// Makes `dir` ready: the tmpfs mounted there, or a plain directory.
    fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(super::io(format!("create {}", self.dir.display())))?;
        self.mounted.get_or_init(|| {
            nix::mount::mount(
                Some("helios-delta"),
                &self.dir,
                Some("tmpfs"),
                MsFlags::empty(),
                Some(DELTA_TMPFS),
            )
            .inspect_err(|e| {
                tracing::info!(dir = %self.dir.display(), error = %e, "no tmpfs for delta lower layers; they are written to the state dir");
            })
            .is_ok()
        });
        Ok(())
    }

    fn touch(&self, l: &Arc<Lower>) {
        let mut recent = self.recent.lock();
        recent.retain(|r| !Arc::ptr_eq(r, l));
        recent.push_front(l.clone());
        recent.truncate(RECENT);
    }

    fn cached(&self, id: SnapshotId) -> Option<Arc<Lower>> {
        let l = self.open.lock().get(&id).and_then(Weak::upgrade)?;
        self.touch(&l);
        Some(l)
    }

    /// A delta lower of `id` (child of `parent`) over a native lower (its nearest ancestor's if one of
    /// the last `GENERATIONS` has one), written now if need be; `None` when no native
    /// lower is close enough (every delta would exceed `LIMITS`).
    pub(crate) fn get(
        &self,
        id: SnapshotId,
        parent: Option<SnapshotId>,
        natives: &Natives,
    ) -> Result<Option<Arc<Lower>>> {
        if let Some(l) = self.cached(id) {
            return Ok(Some(l));
        }
        let _one = self.writing.lock();
        if let Some(l) = self.cached(id) {
            return Ok(Some(l));
        }
        // Any native lower is a correct base; the nearest ancestor with one is likely
        // the smallest delta, the others are tried (most recently used first) so that
        // the tip of a chain longer than the walk still finds its import's.
        let mut candidates = Vec::new();
        let mut parent = parent;
        for _ in 0..GENERATIONS {
            let Some(p) = parent else { break };
            if natives.is_ready(p) {
                candidates.push(p);
                break;
            }
            parent = match self.repo.snapshot(p) {
                Ok(s) => s.parent,
                // Deleted: the chain ends here.
                Err(_) => None,
            };
        }
        for n in natives.ready_by_use() {
            if !candidates.contains(&n) && n != id {
                candidates.push(n);
            }
        }
        for base_id in candidates {
            if self.too_big.lock().contains(&(id, base_id)) {
                continue;
            }
            let Some(native) = natives.get(base_id) else {
                continue;
            };
            if let Some(l) = self.write(id, base_id, native)? {
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    /// Writes the delta of `id` over `native`, the native lower of `base_id`; `None`
    /// when it would exceed `LIMITS`.
    fn write(
        &self,
        id: SnapshotId,
        base_id: SnapshotId,
        native: Arc<Lower>,
    ) -> Result<Option<Arc<Lower>>> {
        let start = Instant::now();
        self.prepare()?;
        let path = self
            .dir
            .join(format!("{id}-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        let whiteout = &mut |p: &std::path::Path| {
            use nix::sys::stat::{Mode, SFlag, makedev, mknod};
            mknod(p, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(|e| {
                helios_snapshot::Error::io(format!("make a whiteout {}", p.display()), e.into())
            })
        };
        let Some(stats) = self
            .repo
            .export_delta(base_id, id, &path, LIMITS, whiteout)?
        else {
            let mut too_big = self.too_big.lock();
            if too_big.len() >= 4096 {
                too_big.clear();
            }
            too_big.insert((id, base_id));
            return Ok(None);
        };
        tracing::debug!(snapshot = %id, base = %base_id, paths = stats.paths, deleted = stats.deleted, bytes = stats.bytes, us = start.elapsed().as_micros() as u64, "delta lower layer written");
        let l = Arc::new(Lower {
            path,
            data: native.data.clone(),
            below: Some(native),
            mount: Mutex::new(None),
            owned: true,
        });
        let mut open = self.open.lock();
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(id, Arc::downgrade(&l));
        drop(open);
        self.touch(&l);
        Ok(Some(l))
    }
}

impl Drop for Deltas {
    fn drop(&mut self) {
        self.shutdown();
    }
}
