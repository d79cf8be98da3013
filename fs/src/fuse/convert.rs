//! Conversions between the core's types and fuser's, and small reply helpers.

use super::*;

pub(super) fn ino(i: INodeNo) -> Ino {
    Ino(i.0)
}

pub(super) fn name(n: &OsStr) -> Result<Name, Errno> {
    Name::new(n.as_bytes()).map_err(|e| errno("name", &e))
}

pub(super) fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::Socket => FileType::Socket,
    }
}

pub(super) fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

pub(super) fn nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

pub(super) fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::SpecificTime(t) => SetTime::At(nanos(t)),
        TimeOrNow::Now => SetTime::Now,
    }
}

pub(crate) fn attr(s: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(s.ino.0),
        size: s.size,
        blocks: s.blocks,
        atime: time(s.atime),
        mtime: time(s.mtime),
        ctime: time(s.ctime),
        crtime: time(s.ctime),
        kind: file_type(s.kind),
        perm: (s.mode & 0o7777) as u16,
        nlink: s.nlink,
        uid: s.uid,
        gid: s.gid,
        rdev: s.rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

pub(super) const GEN: Generation = Generation(0);

pub(super) fn reply_entry(reply: ReplyEntry, result: Result<Stat, Errno>) {
    match result {
        Ok(s) => reply.entry(&TTL, &attr(&s), GEN),
        Err(e) => reply.error(e),
    }
}

pub(super) fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Attributes sent with a negative entry (the kernel ignores them).
pub(super) const NEGATIVE_STAT: Stat = Stat {
    ino: Ino(0),
    kind: Kind::File,
    size: 0,
    mode: 0,
    uid: 0,
    gid: 0,
    nlink: 0,
    atime: 0,
    mtime: 0,
    ctime: 0,
    rdev: 0,
    blocks: 0,
};
