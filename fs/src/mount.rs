//! A mounted workspace: the FUSE session serving it, and the operations that must
//! coordinate with the kernel (snapshot flushes writers first; checkout invalidates what
//! the kernel cached).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier, SessionACL};
use helios_snapshot::{Snapshot, SnapshotId, Workspace};
use parking_lot::Mutex;

use crate::fuse::{HeliosFs, Inner};
use crate::{Error, Result};

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Threads serving FUSE requests (each with its own device fd).
    pub threads: usize,
    /// Use FUSE passthrough for open files where the kernel allows it.
    pub passthrough: bool,
    /// Let every user (containers' users included) use the mount (`allow_other`).
    pub allow_other: bool,
    /// Sync the workspace's journal this often in the background; `None`: only when a
    /// program asks (fsync, fdatasync, fsyncdir).
    pub journal_interval: Option<Duration>,
    /// Serve requests through FUSE-over-io_uring where the kernel offers it (see
    /// [`uring_available`]); otherwise, and as the fallback, through the device.
    pub io_uring: bool,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            threads: default_threads(),
            passthrough: true,
            allow_other: true,
            journal_interval: Some(JOURNAL_INTERVAL),
            io_uring: true,
        }
    }
}

/// FUSE threads per workspace unless told: one per core, at least 2 (a request that
/// waits on the store must not stall the others) and at most 4 (a daemon serves many
/// workspaces, each with its own threads and device descriptors).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

/// FUSE-over-io_uring threads per CPU (each its own ring with one entry): a request that
/// blocks (an fsync, a read from the store) leaves the other to serve the callers on
/// that CPU.
const URING_THREADS: usize = 2;

/// Whether the kernel offers FUSE-over-io_uring (Linux 6.14+, and root enabled it:
/// `echo Y > /sys/module/fuse/parameters/enable_uring`).
pub fn uring_available() -> bool {
    std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|s| s.trim() == "Y")
}

/// How often a mounted workspace's journal is synced in the background by default,
/// bounding what a crash of the daemon can lose of changes nobody fsynced (ext4 commits
/// every 5 s too). The kernel sends no request for `syncfs(2)` to a `/dev/fuse`
/// filesystem (only virtiofs gets FUSE_SYNCFS), so this interval also bounds a syncfs.
pub const JOURNAL_INTERVAL: Duration = Duration::from_secs(5);

/// A workspace mounted at a path. Dropping it unmounts.
pub struct Mount {
    inner: Arc<Inner>,
    session: Mutex<Option<BackgroundSession>>,
    notifier: Notifier,
    mountpoint: PathBuf,
    /// Dropped to stop the background journal sync.
    syncer: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    /// Mounted through fusermount3 (the daemon is not root).
    unprivileged: bool,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl Mount {
    /// Mounts `ws` at `mountpoint` (an existing directory) with the FUSE engine.
    pub fn fuse(ws: Arc<Workspace>, mountpoint: &Path, opts: &MountOptions) -> Result<Mount> {
        let inner = Arc::new(Inner::new(ws.clone(), opts.passthrough, opts.io_uring));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("helios".into()),
            MountOption::Subtype("helios".into()),
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
        ];
        if ws.read_only() {
            config.mount_options.push(MountOption::RO);
        }
        if opts.allow_other {
            config.acl = SessionACL::All;
        }
        config.n_threads = Some(opts.threads.max(1));
        config.clone_fd = opts.threads > 1;
        if opts.io_uring {
            config.io_uring_threads = Some(URING_THREADS);
        }
        let mount_err = |e| Error::Mount {
            context: format!("mount {}", mountpoint.display()),
            source: e,
        };
        let unprivileged = crate::fusermount::needed();
        let session = if unprivileged {
            // No root: fusermount3 mounts and hands the device back.
            let mut o =
                String::from("fsname=helios,subtype=helios,default_permissions,nodev,nosuid");
            if ws.read_only() {
                o.push_str(",ro");
            }
            if opts.allow_other {
                o.push_str(",allow_other");
            }
            let fd = crate::fusermount::mount(mountpoint, &o).map_err(mount_err)?;
            let acl = config.acl;
            fuser::Session::from_fd(HeliosFs(inner.clone()), fd, acl, config).map_err(mount_err)?
        } else {
            fuser::Session::new(HeliosFs(inner.clone()), mountpoint, &config).map_err(mount_err)?
        };
        let notifier = session.notifier();
        let _ = inner.notifier.set(session.notifier());
        let bg = session.spawn().map_err(|e| Error::Mount {
            context: "start FUSE session".into(),
            source: e,
        })?;
        let syncer = match opts.journal_interval {
            Some(every) if !ws.read_only() => spawn_syncer(ws.clone(), every),
            _ => None,
        };
        Ok(Mount {
            inner,
            session: Mutex::new(Some(bg)),
            notifier,
            mountpoint: mountpoint.to_path_buf(),
            syncer: Mutex::new(syncer),
            unprivileged,
        })
    }

    /// The workspace served.
    pub fn workspace(&self) -> &Arc<Workspace> {
        &self.inner.ws
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The FUSE requests this mount has served, by opcode (those with a count).
    pub fn requests(&self) -> Vec<(&'static str, u64)> {
        self.inner.counts.read()
    }

    /// Whether open files are passed through to the kernel.
    pub fn passthrough(&self) -> bool {
        self.inner.passthrough.load(Ordering::Relaxed)
    }

    /// Whether requests come through FUSE-over-io_uring rings (else the device).
    pub fn io_uring(&self) -> bool {
        self.inner.uring.load(Ordering::Relaxed)
    }

    /// How many of the requests served (see `requests`) came through the rings.
    pub fn requests_through_rings(&self) -> u64 {
        self.inner.counts.through_rings()
    }

    /// Snapshots the workspace, including every write that returned before this call
    /// (writes through passthrough handles included).
    pub fn snapshot(
        &self,
        label: Option<String>,
        annotations: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Snapshot> {
        self.snapshot_with(helios_snapshot::SnapshotRequest {
            label,
            annotations,
            ..Default::default()
        })
    }

    /// `snapshot` with every choice of the request (durability among them).
    pub fn snapshot_with(&self, req: helios_snapshot::SnapshotRequest) -> Result<Snapshot> {
        self.inner.flush_writers()?;
        Ok(self.inner.ws.snapshot_with(req)?)
    }

    /// Switches the mounted workspace to snapshot `id` in place and invalidates what the
    /// kernel cached, so every lookup after this returns sees the new tree.
    pub fn checkout(&self, id: SnapshotId, discard: bool) -> Result<()> {
        if !discard {
            // Writes through open handles (passthrough: unseen here) since the last
            // snapshot are uncommitted changes: the own copy's size or mtime moved. A
            // file merely open for writing does not block a checkout.
            self.inner.refresh_writers()?;
        }
        let inv = self.inner.ws.checkout(id, discard)?;
        for (parent, name) in self.inner.take_negative() {
            let _ = self.notifier.inval_entry(INodeNo(parent.0), &name);
        }
        for (parent, name) in &inv.entries {
            // ENOENT: the kernel already forgot it; nothing to invalidate.
            let _ = self
                .notifier
                .inval_entry(INodeNo(parent.0), name.as_os_str());
        }
        for ino in &inv.inodes {
            let _ = self.notifier.inval_inode(INodeNo(ino.0), 0, 0);
        }
        Ok(())
    }

    /// Unmounts and waits for the session to end.
    pub fn unmount(self) -> Result<()> {
        self.stop()
    }

    /// Unmounts; when the mount is busy (a process still works in it), detaches it
    /// lazily so it disappears once the last user leaves, and reports the busy error.
    fn stop(&self) -> Result<()> {
        if let Some((stop, thread)) = self.syncer.lock().take() {
            drop(stop);
            let _ = thread.join();
        }
        let session = self.session.lock().take();
        if self.unprivileged
            && let Some(bg) = session
        {
            // The session was made from fusermount3's descriptor: fuser holds no mount
            // to undo, fusermount3 unmounts.
            if let Err(e) = crate::fusermount::unmount(&self.mountpoint, false) {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed; detaching lazily");
                let _ = crate::fusermount::unmount(&self.mountpoint, true);
                // The session ends when the last user leaves; not waited for.
                drop(bg);
                return Err(Error::Mount {
                    context: format!("unmount {}", self.mountpoint.display()),
                    source: e,
                });
            }
            return bg.join().map_err(|e| Error::Mount {
                context: format!("end the FUSE session of {}", self.mountpoint.display()),
                source: e,
            });
        }
        if let Some(bg) = session
            && let Err(e) = bg.umount_and_join()
        {
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed; detaching lazily");
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            return Err(Error::Mount {
                context: format!("unmount {}", self.mountpoint.display()),
                source: e,
            });
        }
        Ok(())
    }
}

/// Syncs `ws`'s journal every `every` until the sender is dropped.
fn spawn_syncer(
    ws: Arc<Workspace>,
    every: Duration,
) -> Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let id = ws.id();
    let thread = std::thread::Builder::new()
        .name(format!("helios-sync-{id}"))
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(every)
            {
                if let Err(e) = ws.sync() {
                    tracing::warn!(workspace = %ws.id(), error = %e, "background journal sync failed");
                }
            }
        })
        .map_err(|e| tracing::warn!(workspace = %id, error = %e, "no background journal sync"))
        .ok()?;
    Some((tx, thread))
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
