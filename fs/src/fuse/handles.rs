//! The engine's own state: open file and directory handles, passthrough registrations
//! shared by an inode's handles, the negative entries handed out (a checkout must
//! invalidate them), and what a snapshot or checkout needs of open writers.

use super::*;

/// A directory listing: inode, type and name of each entry, `.` and `..` first.
pub(super) type Listing = Arc<Vec<(Ino, FileType, OsString)>>;

/// An open file or directory.
pub(super) enum Handle {
    File {
        ino: Ino,
        file: Arc<File>,
        write: bool,
        /// The process that opened it: its close flushes for its own writes.
        opener: u32,
        /// Keeps the kernel's passthrough registration alive until release.
        _backing: Option<Arc<BackingId>>,
    },
    Dir {
        /// Entries as of opendir (or the last rewind): offsets stay valid while the
        /// directory changes, as POSIX allows.
        entries: Listing,
    },
}

/// The passthrough registration of an inode, shared by its open handles.
pub(super) struct Backing {
    pub(super) id: std::sync::Weak<BackingId>,
    pub(super) write: bool,
}

/// Negative entries the kernel may cache at most; past this, misses are not cached.
pub(super) const NEGATIVE_MAX: usize = 65_536;

pub(crate) struct Inner {
    pub(crate) ws: Arc<Workspace>,
    /// Names the kernel was told do not exist (and may cache as negative dentries): a
    /// checkout must invalidate them, since the new tree may have them.
    pub(super) negative: Mutex<std::collections::HashSet<(Ino, OsString)>>,
    pub(super) handles: Mutex<HashMap<u64, Arc<Handle>>>,
    pub(super) backings: Mutex<HashMap<Ino, Backing>>,
    pub(super) next_fh: AtomicU64,
    pub(crate) passthrough: AtomicBool,
    pub(super) want_passthrough: bool,
    /// Asks the kernel for FUSE-over-io_uring at init.
    pub(super) want_uring: bool,
    /// The kernel granted it: requests come through per-CPU rings.
    pub(crate) uring: AtomicBool,
    pub(super) state_dir: std::path::PathBuf,
    /// Tells the kernel about changes it did not ask for (set once the session exists).
    pub(crate) notifier: std::sync::OnceLock<fuser::Notifier>,
    /// A read-only mount asked the kernel for stateless files (`FUSE_NO_OPEN_SUPPORT`):
    /// opens are answered ENOSYS once, then never sent again, and the kernel keeps each
    /// file's page cache across opens. Reads then come with handle 0.
    pub(super) no_open: AtomicBool,
    /// The files those reads are served from, by inode (bounded).
    pub(super) stateless: Mutex<HashMap<Ino, Arc<File>>>,
    /// Requests served, by opcode.
    pub(crate) counts: super::counts::RequestCounts,
}

/// Files kept open for stateless reads at most; past this, the set starts over.
const STATELESS_MAX: usize = 4096;

impl Inner {
    pub(crate) fn new(ws: Arc<Workspace>, want_passthrough: bool, want_uring: bool) -> Inner {
        let state_dir = ws.state_dir().to_path_buf();
        Inner {
            ws,
            negative: Mutex::new(std::collections::HashSet::new()),
            handles: Mutex::new(HashMap::new()),
            backings: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            passthrough: AtomicBool::new(false),
            want_passthrough,
            want_uring,
            uring: AtomicBool::new(false),
            state_dir,
            notifier: std::sync::OnceLock::new(),
            no_open: AtomicBool::new(false),
            stateless: Mutex::new(HashMap::new()),
            counts: Default::default(),
        }
    }

    /// The file a stateless read of `ino` (handle 0, see `no_open`) reads from.
    pub(super) fn stateless_file(&self, ino: Ino) -> Result<Arc<File>, Errno> {
        if let Some(f) = self.stateless.lock().get(&ino) {
            return Ok(f.clone());
        }
        let (file, _) = self
            .ws
            .backing_file(ino, false, false)
            .map_err(|e| errno("read", &e))?;
        let mut files = self.stateless.lock();
        if files.len() >= STATELESS_MAX {
            files.clear();
        }
        files.insert(ino, file.clone());
        Ok(file)
    }

    /// Takes the negative entries handed out so far (to invalidate them).
    pub(crate) fn take_negative(&self) -> Vec<(Ino, OsString)> {
        self.negative.lock().drain().collect()
    }

    pub(super) fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, Arc::new(h));
        fh
    }

    pub(super) fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.handles.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// Inodes with a handle open for writing: their own copies may hold writes the
    /// workspace has not been told about (passthrough writes bypass this process).
    pub(crate) fn writable_inodes(&self) -> Vec<Ino> {
        let mut v: Vec<Ino> = self
            .handles
            .lock()
            .values()
            .filter_map(|h| match &**h {
                Handle::File {
                    ino, write: true, ..
                } => Some(*ino),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Counts every file open for writing as changed, so that a snapshot hashes what
    /// callers wrote through passthrough (which never reaches this process).
    /// Records, from each own copy's size and mtime, whether files open for writing
    /// changed since they were last committed.
    pub(crate) fn refresh_writers(&self) -> helios_snapshot::Result<()> {
        for ino in self.writable_inodes() {
            gone_is_fine(self.ws.getattr(ino).map(|_| ()))?;
        }
        Ok(())
    }

    pub(crate) fn flush_writers(&self) -> helios_snapshot::Result<()> {
        for ino in self.writable_inodes() {
            gone_is_fine(self.ws.note_write(ino))?;
        }
        Ok(())
    }

    /// Opens `ino`, registering a passthrough backing where possible.
    pub(super) fn open_file(
        &self,
        ino: Ino,
        flags: OpenFlags,
        opener: u32,
        (uid, gid): (u32, u32),
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Result<(u64, Option<Arc<BackingId>>, FopenFlags), Errno> {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let truncate = write && flags.0 & libc::O_TRUNC != 0;
        let (file, _own) = self
            .ws
            .backing_file(ino, write, truncate)
            .map_err(|e| errno("open", &e))?;
        if truncate && uid != 0 {
            self.kill_setid(ino, gid).map_err(|e| errno("open", &e))?;
        }
        if write {
            // Passthrough writes are invisible here; count the file as changed now.
            self.ws.note_write(ino).map_err(|e| errno("open", &e))?;
        }
        self.ws.open(ino).map_err(|e| errno("open", &e))?;
        // A writer of a set-id file is served here, not passed through: its writes must
        // reach us to clear the bits (the kernel flags unprivileged writes).
        let setid = write
            && self
                .ws
                .mode_and_group(ino)
                .is_ok_and(|(mode, _)| mode & 0o6000 != 0);
        // Writes of a workspace with a quota are served here, where they can be refused.
        let quota = write && self.ws.has_quota();
        self.register(ino, file, write, opener, !setid && !quota, register)
    }

    /// Clears a file's set-id bits as an unprivileged write or truncate by a process of
    /// group `gid` does on ext4: S_ISUID, and S_ISGID where the group may execute or the
    /// writer is not of the file's group (supplementary groups are not known here).
    pub(crate) fn kill_setid(&self, ino: Ino, gid: u32) -> helios_snapshot::Result<()> {
        let (mode, file_gid) = self.ws.mode_and_group(ino)?;
        let kill_sgid = gid != file_gid;
        if helios_snapshot::SetAttr::would_kill(mode, kill_sgid) {
            self.ws.setattr(
                ino,
                SetAttr {
                    kill_setid: true,
                    kill_sgid,
                    ..Default::default()
                },
            )?;
        }
        // The reply of a write or an open carries no attributes, and the kernel drops
        // both bits from its cached mode on such a write, although S_ISGID without group
        // execution stays: it must ask again. Offset -1: attributes only, not the page
        // cache (safe inside a request).
        if mode & 0o6000 != 0
            && let Some(n) = self.notifier.get()
        {
            let _ = n.inval_inode(INodeNo(ino.0), -1, 0);
        }
        Ok(())
    }

    /// Registers an open file (already counted open) as a handle, with a passthrough
    /// backing where possible.
    pub(super) fn register(
        &self,
        ino: Ino,
        file: Arc<File>,
        write: bool,
        opener: u32,
        passthrough: bool,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Result<(u64, Option<Arc<BackingId>>, FopenFlags), Errno> {
        // A read-only handle has nothing to flush at close: spare the round trip.
        let mut fopen = if write {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_NOFLUSH
        };
        let mut backing = None;
        if !passthrough {
            // Served here; bypass the page cache so it stays coherent with passthrough.
            fopen |= FopenFlags::FOPEN_DIRECT_IO;
        } else if self.passthrough.load(Ordering::Relaxed) {
            let mut backings = self.backings.lock();
            match backings
                .get(&ino)
                .and_then(|b| b.id.upgrade().map(|id| (id, b.write)))
            {
                Some((id, bwrite)) if bwrite || !write => backing = Some(id),
                Some(_) => {
                    // The inode is passed through to a read-only file; this writer is
                    // served here instead, bypassing the page cache so it stays coherent.
                    fopen |= FopenFlags::FOPEN_DIRECT_IO;
                }
                None => match register(&file) {
                    Ok(id) => {
                        let id = Arc::new(id);
                        backings.insert(
                            ino,
                            Backing {
                                id: Arc::downgrade(&id),
                                write,
                            },
                        );
                        backing = Some(id);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "FUSE passthrough refused; serving data in userspace");
                        self.passthrough.store(false, Ordering::Relaxed);
                    }
                },
            }
        }
        if backing.is_none() {
            // Every write of a handle served here reaches `wrote` before it returns, so
            // the file is counted changed already: a flush at close has nothing to add
            // (it exists for passthrough writers, whose writes are unseen here).
            fopen |= FopenFlags::FOPEN_NOFLUSH;
        }
        let fh = self.add_handle(Handle::File {
            ino,
            file,
            write,
            opener,
            _backing: backing.clone(),
        });
        Ok((fh, backing, fopen))
    }

    pub(super) fn release_handle(&self, fh: FileHandle) {
        let h = self.handles.lock().remove(&fh.0);
        if let Some(h) = h
            && let Handle::File { ino, .. } = &*h
        {
            let ino = *ino;
            drop(h);
            let mut backings = self.backings.lock();
            if backings.get(&ino).is_some_and(|b| b.id.strong_count() == 0) {
                backings.remove(&ino);
            }
            drop(backings);
            self.ws.release(ino);
        }
    }
}

/// A writer's inode can be freed between listing the handles and reaching it (its
/// last handle released, unlinked): then it has nothing left to commit.
pub(super) fn gone_is_fine(r: helios_snapshot::Result<()>) -> helios_snapshot::Result<()> {
    match r {
        Err(helios_snapshot::Error::NoEntry(_)) => Ok(()),
        other => other,
    }
}
