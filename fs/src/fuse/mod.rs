//! The FUSE filesystem: each callback converts its arguments, calls the workspace once
//! and replies. File data goes through real files (the workspace's own copies and the
//! shared materialized-file cache), handed to the kernel by FUSE passthrough when it is
//! available, so reads and writes need no round trip to this process.
//!
//! Modules: `handles` (open files and directories, passthrough registrations, the
//! negative entries handed out), `convert` (core types to FUSE ones and back).

mod convert;
pub(crate) mod counts;
mod handles;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use helios_snapshot::{
    Ino, Kind, Name, RenameMode, SetAttr, SetTime, Special, Stat, Workspace, XattrMode,
};
use parking_lot::Mutex;

use crate::errno::{errno, io_errno};
pub(crate) use convert::attr;
use convert::*;
use counts::Op;
pub(crate) use handles::Inner;
use handles::*;

/// How long the kernel may cache entries and attributes. Every change goes through this
/// mount, and a checkout invalidates explicitly, so the cache can be long-lived.
pub(crate) const TTL: Duration = Duration::from_secs(3600);

/// The fuser filesystem; the state lives in `Inner`, shared with the `Mount`.
pub(crate) struct HeliosFs(pub(crate) Arc<Inner>);

impl Filesystem for HeliosFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.0.counts.bump(Op::init);
        let caps = config.capabilities();
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2
            | InitFlags::FUSE_EXPORT_SUPPORT
            // With it the kernel checks ACLs and, after setting one, drops the inode's
            // cached attributes, so the mode the workspace derives from an access ACL
            // (`sed -i` and `cp -p` copy modes that way) is what stat shows next.
            | InitFlags::FUSE_POSIX_ACL;
        let _ = config.add_capabilities(wanted & caps);
        // An immutable view (an overlay engine's lower layer) needs no per-open state:
        // without open and release round trips, and with the page cache kept across
        // opens, a warm read of a lower file costs no request at all.
        if self.0.ws.read_only()
            && caps.contains(InitFlags::FUSE_NO_OPEN_SUPPORT)
            && config
                .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
                .is_ok()
        {
            self.0.no_open.store(true, Ordering::Relaxed);
        }
        if self.0.want_passthrough
            && !self.0.no_open.load(Ordering::Relaxed)
            && caps.contains(InitFlags::FUSE_PASSTHROUGH)
        {
            // Depth 0 (the default) makes the kernel refuse every backing file.
            if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok()
            {
                self.0.passthrough.store(true, Ordering::Relaxed);
            }
        }
        let _ = config.set_max_write(1 << 20);
        if self.0.want_uring
            && caps.contains(InitFlags::FUSE_OVER_IO_URING)
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok()
        {
            self.0.uring.store(true, Ordering::Relaxed);
            // Every ring entry keeps a payload buffer of the largest request or reply
            // (two entries per CPU per mount, pages resident once a request used them):
            // 256 KiB bounds that to 1 MiB per CPU per mount. Data mostly goes through
            // passthrough anyway; writes served here come in 256 KiB pieces.
            let _ = config.set_max_write(256 << 10);
        }
        tracing::debug!(
            passthrough = self.0.passthrough.load(Ordering::Relaxed),
            io_uring = self.0.uring.load(Ordering::Relaxed),
            "FUSE session initialized"
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        self.0.counts.bump(Op::lookup);
        let result = name(n).and_then(|n| {
            self.0
                .ws
                .lookup(ino(parent), &n)
                .map_err(|e| errno("lookup", &e))
        });
        match result {
            Ok(s) => reply.entry(&TTL, &attr(&s), GEN),
            Err(e) if e == Errno::ENOENT => {
                // A negative entry (node id 0) spares the kernel asking again; it is
                // remembered so that a checkout can invalidate it.
                let mut neg = self.0.negative.lock();
                if neg.len() < NEGATIVE_MAX {
                    neg.insert((ino(parent), n.to_os_string()));
                    drop(neg);
                    let mut a = attr(&NEGATIVE_STAT);
                    a.ino = INodeNo(0);
                    reply.entry(&TTL, &a, GEN)
                } else {
                    reply.error(e)
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, i: INodeNo, nlookup: u64) {
        self.0.counts.bump(Op::forget);
        self.0.ws.forget(ino(i), nlookup);
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.0.counts.bump(Op::getattr);
        match self.0.ws.getattr(ino(i)) {
            Ok(s) => reply.attr(&TTL, &attr(&s)),
            Err(e) => reply.error(errno("getattr", &e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.0.counts.bump(Op::setattr);
        // With HANDLE_KILLPRIV_V2 the filesystem clears set-id bits (the kernel's flag for
        // it does not reach us through fuser): on a chown, and on a truncate by a process
        // without CAP_FSETID (taken as: not root), as ext4 does.
        if size.is_some()
            && req.uid() != 0
            && let Err(e) = self.0.kill_setid(ino(i), req.gid())
        {
            return reply.error(errno("setattr", &e));
        }
        let kill_setid = uid.is_some() || gid.is_some();
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            kill_setid,
            kill_sgid: false,
        };
        match self.0.ws.setattr(ino(i), set) {
            Ok(s) => reply.attr(&TTL, &attr(&s)),
            Err(e) => reply.error(errno("setattr", &e)),
        }
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        self.0.counts.bump(Op::readlink);
        match self.0.ws.readlink(ino(i)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno("readlink", &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.0.counts.bump(Op::mknod);
        let special = match mode & libc::S_IFMT {
            libc::S_IFREG => None,
            libc::S_IFIFO => Some(Special::Fifo),
            libc::S_IFSOCK => Some(Special::Socket),
            libc::S_IFCHR => Some(Special::Char(rdev.into())),
            libc::S_IFBLK => Some(Special::Block(rdev.into())),
            _ => return reply.error(Errno::EINVAL),
        };
        let (uid, gid, mode) = (req.uid(), req.gid(), mode & !umask);
        let result = name(n).and_then(|n| {
            let parent = ino(parent);
            match special {
                None => self.0.ws.create(parent, &n, Kind::File, mode, uid, gid),
                Some(s) => self.0.ws.mknod(parent, &n, s, mode, uid, gid),
            }
            .map_err(|e| errno("mknod", &e))
        });
        reply_entry(reply, result);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.0.counts.bump(Op::mkdir);
        let result = name(n).and_then(|n| {
            self.0
                .ws
                .mkdir(ino(parent), &n, mode & !umask, req.uid(), req.gid())
                .map_err(|e| errno("mkdir", &e))
        });
        reply_entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        self.0.counts.bump(Op::unlink);
        let result = name(n).and_then(|n| {
            self.0
                .ws
                .unlink(ino(parent), &n)
                .map_err(|e| errno("unlink", &e))
        });
        reply_empty(reply, result);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        self.0.counts.bump(Op::rmdir);
        let result = name(n).and_then(|n| {
            self.0
                .ws
                .rmdir(ino(parent), &n)
                .map_err(|e| errno("rmdir", &e))
        });
        reply_empty(reply, result);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.0.counts.bump(Op::symlink);
        let result = name(link).and_then(|n| {
            self.0
                .ws
                .symlink(
                    ino(parent),
                    &n,
                    target.as_os_str().as_bytes(),
                    req.uid(),
                    req.gid(),
                )
                .map_err(|e| errno("symlink", &e))
        });
        reply_entry(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.0.counts.bump(Op::rename);
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            return reply.error(Errno::EINVAL);
        };
        let result = name(n).and_then(|a| {
            let b = name(newname)?;
            self.0
                .ws
                .rename(ino(parent), &a, ino(newparent), &b, mode)
                .map_err(|e| errno("rename", &e))
        });
        reply_empty(reply, result);
    }

    fn link(
        &self,
        _req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.0.counts.bump(Op::link);
        let result = name(newname).and_then(|n| {
            self.0
                .ws
                .link(ino(i), ino(newparent), &n)
                .map_err(|e| match e {
                    helios_snapshot::Error::InvalidArgument(_) => Errno::EPERM,
                    e => errno("link", &e),
                })
        });
        reply_entry(reply, result);
    }

    fn open(&self, req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.0.counts.bump(Op::open);
        if self.0.no_open.load(Ordering::Relaxed) {
            // The kernel takes ENOSYS as "stateless files": no more opens or releases.
            return reply.error(Errno::ENOSYS);
        }
        match self
            .0
            .open_file(ino(i), flags, req.pid(), (req.uid(), req.gid()), |f| {
                reply.open_backing(f.as_fd())
            }) {
            Ok((fh, Some(backing), fopen)) => {
                reply.opened_passthrough(FileHandle(fh), fopen, &backing)
            }
            Ok((fh, None, fopen)) => reply.opened(FileHandle(fh), fopen),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.0.counts.bump(Op::read);
        let h;
        let stateless;
        let file: &File = if fh.0 == 0 && self.0.no_open.load(Ordering::Relaxed) {
            stateless = match self.0.stateless_file(ino(_i)) {
                Ok(f) => f,
                Err(e) => return reply.error(e),
            };
            &stateless
        } else {
            h = match self.0.handle(fh) {
                Ok(h) => h,
                Err(e) => return reply.error(e),
            };
            let Handle::File { file, .. } = &*h else {
                return reply.error(Errno::EISDIR);
            };
            file
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(io_errno("read", &e)),
            }
        }
        reply.data(&buf[..done]);
    }

    fn write(
        &self,
        req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.0.counts.bump(Op::write);
        let h = match self.0.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::File {
            file, write: true, ..
        } = &*h
        else {
            return reply.error(Errno::EBADF);
        };
        if let Err(e) = self.0.ws.reserve(ino(i), offset + data.len() as u64) {
            return reply.error(errno("write", &e));
        }
        if let Err(e) = file.write_all_at(data, offset) {
            return reply.error(io_errno("write", &e));
        }
        // The kernel asks for it when an unprivileged process writes (HANDLE_KILLPRIV_V2).
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && let Err(e) = self.0.kill_setid(ino(i), req.gid())
        {
            return reply.error(errno("write", &e));
        }
        match self.0.ws.wrote(ino(i), offset + data.len() as u64) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno("write", &e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.0.counts.bump(Op::flush);
        if fh.0 == 0 && self.0.no_open.load(Ordering::Relaxed) {
            // A stateless file of a read-only view has nothing to flush; ENOSYS tells
            // the kernel to stop asking, so a close costs no round trip either.
            return reply.error(Errno::ENOSYS);
        }
        // close(2) waits for flush (release comes later, asynchronously): a writer's
        // changes are counted before its close returns, so a snapshot taken after the
        // close sees them and a late release cannot dirty a later snapshot. The opener's
        // close counts the file changed; any other process's close (every fork+exec of a
        // process holding the file closes an inherited descriptor, and flushes) counts it
        // changed only if the own copy's size or mtime moved.
        if let Ok(h) = self.0.handle(fh)
            && let Handle::File {
                ino,
                write: true,
                opener,
                ..
            } = &*h
        {
            let noted = if req.pid() == *opener {
                self.0.ws.note_write(*ino)
            } else {
                self.0.ws.getattr(*ino).map(|_| ())
            };
            if let Err(e) = noted {
                return reply.error(errno("flush", &e));
            }
        }
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.counts.bump(Op::release);
        self.0.release_handle(fh);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.0.counts.bump(Op::fsync);
        let h = match self.0.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::File {
            file, ino, write, ..
        } = &*h
        else {
            return reply.ok();
        };
        // The data first (it lives in the own copy), then the namespace and attributes
        // through the workspace's journal: after this returns, a crash of the daemon
        // loses neither (fdatasync too: a new file's name is what makes its data
        // reachable, as ext4 commits it).
        let r = if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        };
        if let Err(e) = r {
            return reply.error(io_errno("fsync", &e));
        }
        if *write {
            // Passthrough writes are invisible here; count the file as changed.
            if let Err(e) = gone_is_fine(self.0.ws.note_write(*ino)) {
                return reply.error(errno("fsync", &e));
            }
        }
        match self.0.ws.sync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsync", &e)),
        }
    }

    fn opendir(&self, _req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.0.counts.bump(Op::opendir);
        match self.dir_entries(ino(i)) {
            Ok(entries) => {
                let fh = self.0.add_handle(Handle::Dir { entries });
                // The kernel may cache listings: it drops them itself when an operation
                // through this mount changes the directory, and a checkout invalidates.
                reply.opened(
                    FileHandle(fh),
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.0.counts.bump(Op::readdir);
        let entries = match self.entries_for(i, fh, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (idx, (child, kind, n)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child.0), idx as u64 + 1, *kind, n) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.0.counts.bump(Op::readdirplus);
        let entries = match self.entries_for(i, fh, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (idx, (child, _, n)) in entries.iter().enumerate().skip(offset as usize) {
            let st = if idx < 2 {
                self.0.ws.getattr(*child)
            } else {
                // Each entry returned counts as a lookup (the kernel will forget it).
                match Name::new(n.as_bytes()) {
                    Ok(n) => self.0.ws.lookup(ino(i), &n),
                    Err(e) => Err(e),
                }
            };
            let Ok(st) = st else { continue };
            if reply.add(INodeNo(st.ino.0), idx as u64 + 1, n, &TTL, &attr(&st), GEN) {
                if idx >= 2 {
                    self.0.ws.forget(st.ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.counts.bump(Op::releasedir);
        self.0.handles.lock().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.0.counts.bump(Op::fsyncdir);
        // Names created, renamed or removed in the workspace become durable.
        match self.0.ws.sync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsyncdir", &e)),
        }
    }

    fn statfs(&self, _req: &Request, _i: INodeNo, reply: ReplyStatfs) {
        self.0.counts.bump(Op::statfs);
        let dir = if self.0.state_dir.exists() {
            self.0.state_dir.clone()
        } else {
            self.0
                .state_dir
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        };
        match nix::sys::statvfs::statvfs(&dir) {
            Ok(s) => {
                let frsize = s.fragment_size().max(1);
                let (mut blocks, mut bfree, mut bavail) =
                    (s.blocks(), s.blocks_free(), s.blocks_available());
                let (mut files, mut ffree) = (s.files(), s.files_free());
                // A quota shows as the size of the filesystem, as on a disk of that size
                // (capped by what the host has left).
                if let Some((q, u)) = self.0.ws.limits() {
                    if let Some(limit) = q.bytes {
                        let left = limit.saturating_sub(u.bytes) / frsize;
                        blocks = limit / frsize;
                        bfree = left.min(bfree);
                        bavail = left.min(bavail);
                    }
                    if let Some(limit) = q.inodes {
                        files = limit;
                        ffree = limit.saturating_sub(u.inodes).min(ffree);
                    }
                }
                reply.statfs(
                    blocks,
                    bfree,
                    bavail,
                    files,
                    ffree,
                    frsize as u32,
                    255,
                    frsize as u32,
                )
            }
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        i: INodeNo,
        n: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.0.counts.bump(Op::setxattr);
        let mode = match flags {
            0 => XattrMode::Set,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        if value.len() > helios_snapshot::XATTR_VALUE_MAX {
            return reply.error(Errno::E2BIG);
        }
        match self.0.ws.setxattr(ino(i), n.as_bytes(), value, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("setxattr", &e)),
        }
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        self.0.counts.bump(Op::getxattr);
        match self.0.ws.getxattr(ino(i), n.as_bytes()) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno("getxattr", &e)),
        }
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        self.0.counts.bump(Op::listxattr);
        match self.0.ws.listxattr(ino(i)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() > size as usize {
                    reply.error(Errno::ERANGE)
                } else {
                    reply.data(&buf)
                }
            }
            Err(e) => reply.error(errno("listxattr", &e)),
        }
    }

    fn removexattr(&self, _req: &Request, i: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        self.0.counts.bump(Op::removexattr);
        match self.0.ws.removexattr(ino(i), n.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("removexattr", &e)),
        }
    }

    fn access(&self, _req: &Request, i: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        self.0.counts.bump(Op::access);
        // Permission checks are the kernel's (default_permissions); this only says
        // whether the inode exists.
        match self.0.ws.getattr(ino(i)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno("access", &e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.0.counts.bump(Op::create);
        let n = match name(n) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let _ = flags;
        let (st, file) =
            match self
                .0
                .ws
                .create_file(ino(parent), &n, mode & !umask, req.uid(), req.gid())
            {
                Ok(s) => s,
                Err(e) => return reply.error(errno("create", &e)),
            };
        // The new file is empty, counted as changed and as open: register it as it is.
        // Writes of a workspace with a quota are served here, where they can be refused.
        let passthrough = st.mode & 0o6000 == 0 && !self.0.ws.has_quota();
        match self
            .0
            .register(st.ino, file, true, req.pid(), passthrough, |f| {
                reply.open_backing(f.as_fd())
            }) {
            Ok((fh, Some(backing), fopen)) => {
                reply.created_passthrough(&TTL, &attr(&st), GEN, FileHandle(fh), fopen, &backing)
            }
            Ok((fh, None, fopen)) => reply.created(&TTL, &attr(&st), GEN, FileHandle(fh), fopen),
            Err(e) => {
                self.0.ws.forget(st.ino, 1);
                reply.error(e)
            }
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        self.0.counts.bump(Op::ioctl);
        // No device-like controls on workspace files. ENOTTY is what a regular file
        // answers (Python's open() asks isatty() of every file it opens).
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.0.counts.bump(Op::fallocate);
        let h = match self.0.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::File {
            file, write: true, ..
        } = &*h
        else {
            return reply.error(Errno::EBADF);
        };
        let flags = nix::fcntl::FallocateFlags::from_bits_truncate(mode);
        if !flags.contains(nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE)
            && let Err(e) = self.0.ws.reserve(ino(i), offset.saturating_add(length))
        {
            return reply.error(errno("fallocate", &e));
        }
        if let Err(e) = nix::fcntl::fallocate(file.as_fd(), flags, offset as i64, length as i64) {
            return reply.error(Errno::from_i32(e as i32));
        }
        match self.0.ws.note_write(ino(i)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fallocate", &e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.0.counts.bump(Op::lseek);
        let h = match self.0.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::File { file, .. } = &*h else {
            return reply.error(Errno::EINVAL);
        };
        let whence = match whence {
            libc::SEEK_SET => nix::unistd::Whence::SeekSet,
            libc::SEEK_CUR => nix::unistd::Whence::SeekCur,
            libc::SEEK_END => nix::unistd::Whence::SeekEnd,
            libc::SEEK_DATA => nix::unistd::Whence::SeekData,
            libc::SEEK_HOLE => nix::unistd::Whence::SeekHole,
            _ => return reply.error(Errno::EINVAL),
        };
        match nix::unistd::lseek(file.as_fd(), offset, whence) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.0.counts.bump(Op::copy_file_range);
        let (hin, hout) = match (self.0.handle(fh_in), self.0.handle(fh_out)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let (
            Handle::File { file: fin, .. },
            Handle::File {
                file: fout,
                write: true,
                ..
            },
        ) = (&*hin, &*hout)
        else {
            return reply.error(Errno::EBADF);
        };
        if let Err(e) = self
            .0
            .ws
            .reserve(ino(ino_out), offset_out.saturating_add(len))
        {
            return reply.error(errno("copy_file_range", &e));
        }
        let mut off_in = offset_in as i64;
        let mut off_out = offset_out as i64;
        let n = match nix::fcntl::copy_file_range(
            fin.as_fd(),
            Some(&mut off_in),
            fout.as_fd(),
            Some(&mut off_out),
            len as usize,
        ) {
            Ok(n) => n,
            Err(e) => return reply.error(Errno::from_i32(e as i32)),
        };
        match self.0.ws.wrote(ino(ino_out), offset_out + n as u64) {
            Ok(()) => reply.written(n as u32),
            Err(e) => reply.error(errno("copy_file_range", &e)),
        }
    }
}

impl HeliosFs {
    fn dir_entries(&self, dir: Ino) -> Result<Listing, Errno> {
        let list = self.0.ws.readdir(dir).map_err(|e| errno("readdir", &e))?;
        let parent = self.0.ws.parent(dir).unwrap_or(dir);
        let mut v = Vec::with_capacity(list.len() + 2);
        v.push((dir, FileType::Directory, OsString::from(".")));
        v.push((parent, FileType::Directory, OsString::from("..")));
        v.extend(
            list.into_iter()
                .map(|e| (e.ino, file_type(e.kind), e.name.as_os_str().to_os_string())),
        );
        Ok(Arc::new(v))
    }

    /// The listing of a directory handle; offset 0 (a rewind) takes a fresh listing.
    fn entries_for(&self, i: INodeNo, fh: FileHandle, offset: u64) -> Result<Listing, Errno> {
        if offset == 0 {
            let fresh = self.dir_entries(ino(i))?;
            if let Some(h) = self.0.handles.lock().get_mut(&fh.0) {
                *h = Arc::new(Handle::Dir {
                    entries: fresh.clone(),
                });
            }
            return Ok(fresh);
        }
        match &*self.0.handle(fh)? {
            Handle::Dir { entries } => Ok(entries.clone()),
            Handle::File { .. } => Err(Errno::ENOTDIR),
        }
    }
}
