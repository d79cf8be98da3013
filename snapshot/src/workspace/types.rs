//! What engines and callers see of a workspace: kinds, attributes, directory entries,
//! attribute changes, the invalidation a checkout hands back, and the persisted record.

use super::*;

/// The largest extended attribute value accepted (Linux XATTR_SIZE_MAX).
pub const XATTR_VALUE_MAX: usize = 64 << 10;

/// The kind of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Unix domain socket.
    Socket,
}

/// Attributes of an inode, as `stat` reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Inode number.
    pub ino: Ino,
    /// Kind.
    pub kind: Kind,
    /// Size in bytes (target length for symlinks).
    pub size: u64,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Access time.
    pub atime: Nanos,
    /// Modification time.
    pub mtime: Nanos,
    /// Status change time.
    pub ctime: Nanos,
    /// Device number of a character or block device; 0 otherwise.
    pub rdev: u64,
    /// 512-byte blocks allocated: what the own copy really uses (holes are free), or the
    /// size rounded up for content that lives in the store.
    pub blocks: u64,
}

/// One directory entry, as `readdir` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Name.
    pub name: Name,
    /// Inode.
    pub ino: Ino,
    /// Kind.
    pub kind: Kind,
}

/// A time to set: a value, or "now".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// Nanoseconds since the epoch.
    At(Nanos),
    /// The current time.
    Now,
}

/// Attribute changes for `setattr`; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend with zeros).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// Clear the set-user-ID bit, and the set-group-ID bit where group execution is on,
    /// as a write, truncate or chown does (not for directories; an explicit `mode` wins).
    pub kill_setid: bool,
    /// With `kill_setid`: clear the set-group-ID bit without group execution too (the
    /// caller is not in the file's group).
    pub kill_sgid: bool,
}

impl SetAttr {
    /// True when `kill_setid` (with `kill_sgid` as given) would change `mode`.
    pub fn would_kill(mode: u32, kill_sgid: bool) -> bool {
        killed_setid(mode, kill_sgid) != mode
    }
}

/// `mode` without the set-id bits a write or chown removes: S_ISUID, and S_ISGID when
/// the group may execute (without it, S_ISGID means mandatory locking and stays).
pub(crate) fn killed_setid(mode: u32, kill_sgid: bool) -> u32 {
    let mut m = mode & !0o4000;
    if kill_sgid || m & 0o010 != 0 {
        m &= !0o2000;
    }
    m
}

/// How `rename` treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RenameMode {
    /// Replace the target (POSIX rename).
    #[default]
    Replace,
    /// Fail with `AlreadyExists` if the target exists (RENAME_NOREPLACE).
    NoReplace,
    /// Swap source and target, which must both exist (RENAME_EXCHANGE).
    Exchange,
}

/// How `setxattr` treats an existing attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XattrMode {
    /// Create or replace.
    #[default]
    Set,
    /// Fail if it exists (XATTR_CREATE).
    Create,
    /// Fail if it does not exist (XATTR_REPLACE).
    Replace,
}

/// What the kernel may have cached that a checkout made stale.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invalidation {
    /// Directory entries (parent, name) the kernel has looked up.
    pub entries: Vec<(Ino, Name)>,
    /// Inodes the kernel knows (attributes, page cache).
    pub inodes: Vec<Ino>,
}

/// The persisted state of a workspace (`workspaces` column family).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    /// Its id.
    pub id: WorkspaceId,
    /// The snapshot it stands on; `None` for a workspace created empty.
    pub base: Option<SnapshotId>,
    /// Fingerprint of the content it started from (the base's root).
    pub base_root: Hash,
    /// Uncommitted changes saved at the last close, as a tree; `None` when clean.
    pub head: Option<TreeRef>,
    /// Whether it refuses changes.
    pub read_only: bool,
    /// The snapshot an overlay workspace's lower layer shows (its upperdir holds every
    /// change since): kept by `prune` like `base`. `None` for fuse workspaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<SnapshotId>,
    /// Opaque properties of the caller (the daemon keeps mountpoint and engine here).
    #[serde(default)]
    pub props: serde_json::Value,
    /// Its limits; `None`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

/// Limits on what a workspace holds. A change that would take it past one fails with
/// `QuotaExceeded` (EDQUOT) and changes nothing; a workspace already past a limit (set
/// below its usage) can still shrink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Bytes of regular files: the sum of their sizes, counted once per name (as
    /// `du --apparent-size --count-links` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Names: files, directories, symlinks and special files, counted once per name (a
    /// hard link counts again); the root is not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
}

impl Quota {
    /// True when it limits nothing.
    pub fn is_unlimited(&self) -> bool {
        self.bytes.is_none() && self.inodes.is_none()
    }
}

/// What a workspace holds, measured as `Quota` counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of regular files, once per name.
    pub bytes: u64,
    /// Names below the root.
    pub inodes: u64,
}

pub(crate) fn now() -> Nanos {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as Nanos,
        Err(_) => 0,
    }
}
