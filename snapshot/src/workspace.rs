//! The workspace: a mutable copy-on-write layer over a base snapshot.
//!
//! The workspace is an inode table. Directories load lazily from the store on first use;
//! files stay `Clean` (a content hash) until written, when they are copied up into a real
//! file under the workspace's state directory (so an engine can hand the kernel a file
//! descriptor). Every change marks its directory and the directory's ancestors dirty, so
//! a snapshot re-encodes only dirty directories and hashes only written files: cost
//! O(changed paths × depth + changed bytes). Fork and checkout swap the root for an
//! unloaded tree reference: O(1) in tree size.
//!
//! Invariants:
//! - a dirty directory is loaded, and all its ancestors are dirty;
//! - a directory's `parents` holds exactly its parent (empty for the root); a file's
//!   `parents` holds one entry per name that links to it;
//! - inode numbers are never reused within a workspace's lifetime.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::Instant;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::acl;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::ids::{Ino, SnapshotId, WorkspaceId};
use crate::journal;
use crate::name::Name;
use crate::repo::Shared;
use crate::snapshot::{self, Metrics, Snapshot};
use crate::store::{Batch, Cf, Durability, ObjectWriter};
use crate::tree::{self, Attrs, Content, EntryKind, EntryRef, Nanos, Special, TARGET_MAX, TreeRef};

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
    /// Opaque properties of the caller (the daemon keeps mountpoint and engine here).
    #[serde(default)]
    pub props: serde_json::Value,
}

pub(crate) fn now() -> Nanos {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as Nanos,
        Err(_) => 0,
    }
}

enum FileData {
    Clean(Content),
    Owned {
        id: u64,
        size: u64,
        /// The content as last committed, while the file has not changed since.
        committed: Option<Content>,
        /// Changes noted so far: a snapshot hashes own copies outside the lock and uses
        /// the result only if this did not move meanwhile.
        writes: u64,
    },
}

enum DirState {
    Unloaded(TreeRef),
    Loaded {
        entries: BTreeMap<Name, Ino>,
        /// The tree this directory encodes to, while it has not changed.
        clean: Option<TreeRef>,
        /// The node it was loaded from, to count changed paths at commit.
        base: Option<Hash>,
        subdirs: u32,
    },
}

enum Node {
    Dir {
        state: DirState,
        /// Entries of the same path before the last checkout, for inode reuse.
        prev: Option<BTreeMap<Name, Ino>>,
    },
    File(FileData),
    Symlink(Vec<u8>),
    Special(Special),
}

struct Inode {
    node: Node,
    attrs: Attrs,
    atime: Nanos,
    ctime: Nanos,
    parents: Vec<Ino>,
    /// A directory's name in its parent, to find its path again after a checkout.
    name: Option<Name>,
    /// Kernel lookups not yet forgotten (atomic: counted under the shared lock).
    nlookup: AtomicU64,
    /// Open file handles.
    open: AtomicU32,
    generation: u64,
}

impl Node {
    /// A new, empty, dirty directory.
    fn empty_dir() -> Node {
        Node::Dir {
            state: DirState::Loaded {
                entries: BTreeMap::new(),
                clean: None,
                base: None,
                subdirs: 0,
            },
            prev: None,
        }
    }
}

impl Inode {
    fn kind(&self) -> Kind {
        match self.node {
            Node::Dir { .. } => Kind::Dir,
            Node::File(_) => Kind::File,
            Node::Symlink(_) => Kind::Symlink,
            Node::Special(Special::Fifo) => Kind::Fifo,
            Node::Special(Special::Char(_)) => Kind::CharDev,
            Node::Special(Special::Block(_)) => Kind::BlockDev,
            Node::Special(Special::Socket) => Kind::Socket,
        }
    }
}

struct State {
    base: Option<SnapshotId>,
    base_root: Hash,
    props: serde_json::Value,
    /// Inode numbers are small sequential integers: a fast non-cryptographic hash fits.
    inodes: FxHashMap<Ino, Inode>,
    next_ino: u64,
    generation: u64,
    /// Own-copy files of freed inodes, to delete once the lock is released.
    dead_files: Vec<u64>,
    /// Contents of own copies hashed by a snapshot outside the lock (see `prehash`).
    prehashed: FxHashMap<Ino, Prehashed>,
    /// Inodes whose journal record may differ from what the journal holds (`journal.rs`).
    jdirty: FxHashSet<Ino>,
    /// Inodes that have a record in the journal, with the hash of the record as written
    /// (a sync skips records that did not change: an fsync of a file whose data alone
    /// changed then costs no journal write at all).
    journaled: FxHashMap<Ino, Hash>,
    /// Own copies of freed inodes that a journal record still names: deleted once the
    /// record is (a crash before that would otherwise lose a synced file that a rename
    /// replaced, instead of finding its old content).
    held_files: Vec<(Ino, u64)>,
}

/// The record hash of a journal record written by an earlier process.
const UNKNOWN_RECORD: Hash = Hash([0; 32]);

/// An inode a commit marked clean, and a directory's base before it.
struct Cleaned {
    ino: Ino,
    base: Option<Hash>,
}

/// An own copy hashed without the lock, valid while its `writes` count is unchanged.
struct Prehashed {
    id: u64,
    writes: u64,
    content: Content,
    mtime: Nanos,
}

/// A mutable working directory over a base snapshot.
pub struct Workspace {
    shared: Arc<Shared>,
    id: WorkspaceId,
    dir: PathBuf,
    read_only: bool,
    /// Next own-copy file id.
    next_file: AtomicU64,
    /// Own copies were created since the last sync: the next one syncs `data/` too.
    data_created: AtomicBool,
    /// Serializes journal syncs with each other and with what clears the journal
    /// (snapshot, save, checkout), so that batches land in the order they were encoded.
    /// Taken before `state`.
    sync_lock: parking_lot::Mutex<()>,
    /// Shared for lookups and reads of loaded state, exclusive for changes and loads.
    state: RwLock<State>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace").field("id", &self.id).finish()
    }
}

/// A new, empty, dirty directory inode of generation 0.
fn loaded_dir_inode(parent: Option<(Ino, Name)>, attrs: Attrs) -> Inode {
    let (parent, name) = parent.unzip();
    Inode {
        node: Node::empty_dir(),
        atime: attrs.mtime,
        ctime: attrs.mtime,
        attrs,
        parents: parent.into_iter().collect(),
        name,
        nlookup: AtomicU64::new(0),
        open: AtomicU32::new(0),
        generation: 0,
    }
}

fn dir_inode(tref: TreeRef, parent: Option<(Ino, Name)>, generation: u64) -> Inode {
    let (parent, name) = parent.unzip();
    Inode {
        node: Node::Dir {
            state: DirState::Unloaded(tref),
            prev: None,
        },
        attrs: Attrs::default(),
        atime: 0,
        ctime: 0,
        parents: parent.into_iter().collect(),
        name,
        nlookup: AtomicU64::new(0),
        open: AtomicU32::new(0),
        generation,
    }
}

impl Workspace {
    pub(crate) fn from_record(
        shared: Arc<Shared>,
        rec: &WorkspaceRecord,
        start: TreeRef,
    ) -> Result<Workspace> {
        let dir = shared.workspace_dir(rec.id);
        let data = dir.join("data");
        let records = journal::load(shared.store.backend().as_ref(), rec.id)?;
        let mut st = State {
            base: rec.base,
            base_root: rec.base_root,
            props: rec.props.clone(),
            inodes: FxHashMap::default(),
            next_ino: 2,
            generation: 0,
            dead_files: Vec::new(),
            prehashed: FxHashMap::default(),
            jdirty: FxHashSet::default(),
            // Written before this process: their bytes are not known here.
            journaled: records.keys().map(|k| (*k, UNKNOWN_RECORD)).collect(),
            held_files: Vec::new(),
        };
        let mut next_file = 1;
        if records.contains_key(&Ino::ROOT) {
            // The daemon stopped without saving: the journal holds what was synced, the
            // own copies what was written.
            next_file = st.recover(&data, &records)?;
            tracing::info!(workspace = %rec.id, records = records.len(), "workspace recovered from its journal");
        } else {
            // Uncommitted data was saved into the store as `head`; stale copies are
            // garbage. The directory itself is created at the first copy-up, keeping
            // fork O(1).
            match std::fs::remove_dir_all(&data) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("clear {}", data.display()), e)),
            }
            st.inodes.insert(Ino::ROOT, dir_inode(start, None, 0));
            // Records without a root are stale: the next sync deletes them.
            st.jdirty = st.journaled.keys().copied().collect();
        }
        Ok(Workspace {
            shared,
            id: rec.id,
            dir,
            read_only: rec.read_only,
            next_file: AtomicU64::new(next_file),
            data_created: AtomicBool::new(false),
            sync_lock: parking_lot::Mutex::new(()),
            state: RwLock::new(st),
        })
    }

    /// Its id.
    pub fn id(&self) -> WorkspaceId {
        self.id
    }

    /// True when it refuses changes.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The snapshot it stands on.
    pub fn base(&self) -> Option<SnapshotId> {
        self.state.write().base
    }

    /// True when the content differs from the base snapshot (or was changed at all).
    pub fn dirty(&self) -> bool {
        self.state.write().is_dirty()
    }

    fn make_record(&self, st: &State, head: Option<TreeRef>) -> WorkspaceRecord {
        WorkspaceRecord {
            id: self.id,
            base: st.base,
            base_root: st.base_root,
            head,
            read_only: self.read_only,
            props: st.props.clone(),
        }
    }

    fn data_path(&self, id: u64) -> PathBuf {
        self.dir.join("data").join(id.to_string())
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }

    // ---- inode operations (the engine's interface) ----

    /// Finds `name` in directory `parent` and counts one kernel lookup of the result.
    pub fn lookup(&self, parent: Ino, name: &Name) -> Result<Stat> {
        {
            // Fast path, shared lock: both ends loaded.
            let st = self.state.read();
            if st.is_ready(parent) {
                let child = match st.entries(parent)?.get(name) {
                    Some(c) => *c,
                    None => return Err(Error::NoEntry(name.to_string())),
                };
                if st.is_ready(child)
                    && let Some(s) = self.stat_shared(&st, child)
                {
                    st.inode(child)?.nlookup.fetch_add(1, Relaxed);
                    return s;
                }
            }
        }
        let mut st = self.state.write();
        let ino = st.lookup(&self.shared, parent, name)?;
        st.inode(ino)?.nlookup.fetch_add(1, Relaxed);
        self.stat(&mut st, ino)
    }

    /// Drops `n` kernel lookups of `ino`; an unlinked inode nobody knows is freed.
    pub fn forget(&self, ino: Ino, n: u64) {
        let mut st = self.state.write();
        if let Some(i) = st.inodes.get_mut(&ino) {
            let _ = i
                .nlookup
                .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
        }
        st.maybe_free(ino);
        self.remove_dead_files(&mut st);
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> Result<Stat> {
        {
            let st = self.state.read();
            if st.is_ready(ino)
                && let Some(s) = self.stat_shared(&st, ino)
            {
                return s;
            }
        }
        let mut st = self.state.write();
        self.stat(&mut st, ino)
    }

    /// `stat` under the shared lock; `None` when the own copy changed behind our back
    /// and the exclusive lock is needed to record it.
    fn stat_shared(&self, st: &State, ino: Ino) -> Option<Result<Stat>> {
        let mut s = match st.stat_loaded(ino) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        if let Some(id) = st.owned_id(ino) {
            let meta = std::fs::metadata(self.data_path(id)).ok()?;
            let mtime = file_mtime(&meta);
            if meta.len() != s.size || mtime != s.mtime {
                return None;
            }
            s.size = meta.len();
            s.mtime = mtime;
            s.ctime = s.ctime.max(file_ctime(&meta));
            s.blocks = std::os::unix::fs::MetadataExt::blocks(&meta);
        }
        Some(Ok(s))
    }

    /// Changes attributes; a size change truncates or extends the file.
    pub fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Stat> {
        self.check_writable()?;
        if set.size.is_some_and(|s| s > 0) {
            self.copy_up(ino)?;
        }
        let mut st = self.state.write();
        st.load_if_dir(&self.shared, ino)?;
        let t = now();
        if let Some(size) = set.size {
            if st.inode(ino)?.kind() == Kind::Dir {
                return Err(Error::IsADirectory(ino.to_string()));
            }
            if st.inode(ino)?.kind() != Kind::File {
                return Err(Error::InvalidArgument("truncate of a non-file".into()));
            }
            let (file, _) = self.own(&mut st, ino, size == 0)?;
            file.set_len(size).map_err(|e| Error::io("truncate", e))?;
            if let Node::File(FileData::Owned {
                size: s,
                committed,
                writes,
                ..
            }) = &mut st.inode_mut(ino)?.node
            {
                *s = size;
                *committed = None;
                *writes += 1;
            }
            let i = st.inode_mut(ino)?;
            i.attrs.mtime = t;
        }
        let i = st.inode_mut(ino)?;
        if let Some(mode) = set.mode {
            i.attrs.mode = mode & 0o7777;
        }
        if let Some(uid) = set.uid {
            i.attrs.uid = uid;
        }
        if let Some(gid) = set.gid {
            i.attrs.gid = gid;
        }
        if let Some(a) = set.atime {
            i.atime = match a {
                SetTime::At(v) => v,
                SetTime::Now => t,
            };
        }
        if let Some(m) = set.mtime {
            i.attrs.mtime = match m {
                SetTime::At(v) => v,
                SetTime::Now => t,
            };
        }
        i.ctime = t;
        let mtime = i.attrs.mtime;
        st.touch(ino);
        if let Some(id) = st.owned_id(ino)
            && (set.mtime.is_some() || set.size.is_some())
        {
            // The own copy's mtime is what stat reports: keep it equal to the one set.
            set_file_mtime(&self.data_path(id), mtime)?;
        }
        self.stat(&mut st, ino)
    }

    /// Attributes, with size and mtime of a file's own copy read from the copy itself:
    /// writes through passthrough file descriptors reach it without passing here.
    fn stat(&self, st: &mut State, ino: Ino) -> Result<Stat> {
        let mut s = st.stat(&self.shared, ino)?;
        if let Some(id) = st.owned_id(ino) {
            let path = self.data_path(id);
            let meta = std::fs::metadata(&path)
                .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
            let mtime = file_mtime(&meta);
            s.size = meta.len();
            s.mtime = mtime;
            s.ctime = s.ctime.max(file_ctime(&meta));
            s.blocks = std::os::unix::fs::MetadataExt::blocks(&meta);
            st.sync_owned(ino, meta.len(), mtime);
        }
        Ok(s)
    }

    /// The entries of a directory, in name order.
    pub fn readdir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        {
            let st = self.state.read();
            if st.is_ready(ino) {
                return st.list(ino);
            }
        }
        let mut st = self.state.write();
        st.ensure_loaded(&self.shared, ino)?;
        st.list(ino)
    }

    /// Creates a regular file (or, with `Kind::Fifo`, a named pipe).
    pub fn create(
        &self,
        parent: Ino,
        name: &Name,
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Stat> {
        self.check_writable()?;
        let node = match kind {
            Kind::File => Node::File(FileData::Clean(Content {
                hash: Hash::of(b""),
                chunked: false,
                size: 0,
            })),
            Kind::Fifo => Node::Special(Special::Fifo),
            Kind::Socket => Node::Special(Special::Socket),
            _ => {
                return Err(Error::InvalidArgument(
                    "create makes files, fifos and sockets; mknod makes devices".into(),
                ));
            }
        };
        Ok(self.create_inner(parent, name, node, mode, uid, gid)?.0)
    }

    /// Creates a special file: a named pipe, a device node or a socket's name.
    pub fn mknod(
        &self,
        parent: Ino,
        name: &Name,
        special: Special,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Stat> {
        self.check_writable()?;
        Ok(self
            .create_inner(parent, name, Node::Special(special), mode, uid, gid)?
            .0)
    }

    /// Creates a regular file and returns it open (read-write) with its attributes: what
    /// an engine's `create` needs, without opening the new file a second time.
    pub fn create_file(
        &self,
        parent: Ino,
        name: &Name,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(Stat, Arc<File>)> {
        self.check_writable()?;
        let node = Node::File(FileData::Clean(Content {
            hash: Hash::of(b""),
            chunked: false,
            size: 0,
        }));
        let (stat, file) = self.create_inner(parent, name, node, mode, uid, gid)?;
        let file = file.ok_or_else(|| Error::InvalidArgument("not a file".into()))?;
        self.open(stat.ino)?;
        Ok((stat, file))
    }

    /// Inserts a new node under `parent`, counts one kernel lookup of it and returns its
    /// attributes (and, for a regular file, its new own copy, open).
    fn create_inner(
        &self,
        parent: Ino,
        name: &Name,
        node: Node,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(Stat, Option<Arc<File>>)> {
        let is_file = matches!(node, Node::File(_));
        let mut st = self.state.write();
        let ino = st.insert_new(&self.shared, parent, name, node, mode, uid, gid)?;
        let mut file = None;
        if is_file {
            // A new file gets its own copy at once and is committed (stored) at snapshot.
            file = Some(self.own(&mut st, ino, true)?.0);
            st.note_written(ino, Some(0), None)?;
        }
        st.inode(ino)?.nlookup.fetch_add(1, Relaxed);
        let stat = self.stat(&mut st, ino)?;
        Ok((stat, file))
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: Ino, name: &Name, mode: u32, uid: u32, gid: u32) -> Result<Stat> {
        self.check_writable()?;
        Ok(self
            .create_inner(parent, name, Node::empty_dir(), mode, uid, gid)?
            .0)
    }

    /// Creates a symbolic link.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &Name,
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Stat> {
        self.check_writable()?;
        if target.is_empty() || target.len() > TARGET_MAX || target.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "symlink target of {} bytes",
                target.len()
            )));
        }
        let node = Node::Symlink(target.to_vec());
        Ok(self.create_inner(parent, name, node, 0o777, uid, gid)?.0)
    }

    /// The target of a symbolic link.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let st = self.state.read();
        match &st.inode(ino)?.node {
            Node::Symlink(t) => Ok(t.clone()),
            _ => Err(Error::NotASymlink(ino.to_string())),
        }
    }

    /// Adds the name `name` in `parent` for the non-directory `ino`.
    pub fn link(&self, ino: Ino, parent: Ino, name: &Name) -> Result<Stat> {
        self.check_writable()?;
        let mut st = self.state.write();
        if st.inode(ino)?.kind() == Kind::Dir {
            return Err(Error::InvalidArgument(
                "hard links to directories are not allowed".into(),
            ));
        }
        if st.inode(ino)?.parents.is_empty() {
            return Err(Error::NoEntry(format!("{ino} was removed")));
        }
        st.ensure_loaded(&self.shared, parent)?;
        if st.entries(parent)?.contains_key(name) {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        let t = now();
        st.entries_mut(parent)?.insert(name.clone(), ino);
        let i = st.inode_mut(ino)?;
        i.parents.push(parent);
        i.ctime = t;
        i.nlookup.fetch_add(1, Relaxed);
        st.touch_entries(parent, t);
        self.stat(&mut st, ino)
    }

    /// Removes a non-directory entry.
    pub fn unlink(&self, parent: Ino, name: &Name) -> Result<()> {
        self.check_writable()?;
        let mut st = self.state.write();
        let ino = st.lookup(&self.shared, parent, name)?;
        if st.inode(ino)?.kind() == Kind::Dir {
            return Err(Error::IsADirectory(name.to_string()));
        }
        st.detach(parent, name, ino);
        self.remove_dead_files(&mut st);
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: Ino, name: &Name) -> Result<()> {
        self.check_writable()?;
        let mut st = self.state.write();
        let ino = st.lookup(&self.shared, parent, name)?;
        if st.inode(ino)?.kind() != Kind::Dir {
            return Err(Error::NotADirectory(name.to_string()));
        }
        st.ensure_loaded(&self.shared, ino)?;
        if !st.entries(ino)?.is_empty() {
            return Err(Error::NotEmpty(name.to_string()));
        }
        st.detach(parent, name, ino);
        self.remove_dead_files(&mut st);
        Ok(())
    }

    /// Renames `parent/name` to `new_parent/new_name`.
    pub fn rename(
        &self,
        parent: Ino,
        name: &Name,
        new_parent: Ino,
        new_name: &Name,
        mode: RenameMode,
    ) -> Result<()> {
        self.check_writable()?;
        let mut st = self.state.write();
        let src = st.lookup(&self.shared, parent, name)?;
        st.ensure_loaded(&self.shared, new_parent)?;
        let dst = st.entries(new_parent)?.get(new_name).copied();
        let src_dir = st.inode(src)?.kind() == Kind::Dir;
        // Neither end may move a directory below itself.
        if src_dir && st.is_ancestor(src, new_parent)? {
            return Err(Error::Loop(name.to_string()));
        }
        let t = now();
        match (mode, dst) {
            (RenameMode::Exchange, None) => return Err(Error::NoEntry(new_name.to_string())),
            (RenameMode::Exchange, Some(dst)) => {
                if st.inode(dst)?.kind() == Kind::Dir && st.is_ancestor(dst, parent)? {
                    return Err(Error::Loop(new_name.to_string()));
                }
                if src == dst {
                    return Ok(());
                }
                st.entries_mut(parent)?.insert(name.clone(), dst);
                st.entries_mut(new_parent)?.insert(new_name.clone(), src);
                st.relink(src, parent, new_parent, new_name)?;
                st.relink(dst, new_parent, parent, name)?;
                st.inode_mut(src)?.ctime = t;
                st.inode_mut(dst)?.ctime = t;
                st.touch_entries(parent, t);
                st.touch_entries(new_parent, t);
                return Ok(());
            }
            (RenameMode::NoReplace, Some(_)) => {
                return Err(Error::AlreadyExists(new_name.to_string()));
            }
            (_, Some(dst)) => {
                if dst == src {
                    // POSIX: two names of the same file: do nothing.
                    return Ok(());
                }
                let dst_dir = st.inode(dst)?.kind() == Kind::Dir;
                match (src_dir, dst_dir) {
                    (true, false) => return Err(Error::NotADirectory(new_name.to_string())),
                    (false, true) => return Err(Error::IsADirectory(new_name.to_string())),
                    (true, true) => {
                        st.ensure_loaded(&self.shared, dst)?;
                        if !st.entries(dst)?.is_empty() {
                            return Err(Error::NotEmpty(new_name.to_string()));
                        }
                    }
                    (false, false) => {}
                }
                st.detach(new_parent, new_name, dst);
            }
            (_, None) => {}
        }
        st.entries_mut(parent)?.remove(name);
        st.entries_mut(new_parent)?.insert(new_name.clone(), src);
        if src_dir && parent != new_parent {
            st.adjust_subdirs(parent, -1);
            st.adjust_subdirs(new_parent, 1);
        }
        st.relink(src, parent, new_parent, new_name)?;
        st.inode_mut(src)?.ctime = t;
        st.touch_entries(parent, t);
        if new_parent != parent {
            st.touch_entries(new_parent, t);
        }
        self.remove_dead_files(&mut st);
        Ok(())
    }

    /// Reads up to `len` bytes at `offset`.
    pub fn read(&self, ino: Ino, offset: u64, len: u32) -> Result<Vec<u8>> {
        // Shared lock only; reads do not update atime (as with `noatime`).
        let source = {
            let st = self.state.read();
            let clean = match &st.inode(ino)?.node {
                Node::File(FileData::Clean(c)) => Some(*c),
                Node::File(FileData::Owned { .. }) => None,
                Node::Dir { .. } => return Err(Error::IsADirectory(ino.to_string())),
                _ => return Err(Error::InvalidArgument("read of a special file".into())),
            };
            match clean {
                Some(c) => Ok(c),
                None => Err(self.owned_file(&st, ino)?),
            }
        };
        match source {
            Ok(content) => read_content(&self.shared, &content, offset, len),
            Err(file) => {
                let mut buf = vec![0u8; len as usize];
                let mut done = 0;
                while done < buf.len() {
                    let n = file
                        .read_at(&mut buf[done..], offset + done as u64)
                        .map_err(|e| Error::io("read", e))?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                buf.truncate(done);
                Ok(buf)
            }
        }
    }

    /// Writes `data` at `offset` (past the end leaves a hole); returns bytes written.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        self.check_writable()?;
        self.copy_up(ino)?;
        let file = {
            let mut st = self.state.write();
            if st.inode(ino)?.kind() != Kind::File {
                return Err(Error::InvalidArgument("write to a non-file".into()));
            }
            self.own(&mut st, ino, false)?.0
        };
        file.write_all_at(data, offset)
            .map_err(|e| Error::io("write", e))?;
        let end = offset + data.len() as u64;
        let mut st = self.state.write();
        st.note_written(ino, Some(end), None)?;
        Ok(data.len())
    }

    /// A real file holding `ino`'s current bytes, for engines that hand the kernel a file
    /// descriptor: the workspace's own copy when `write` (copying up once), otherwise the
    /// workspace's copy if it has one, else a shared read-only materialized file.
    pub fn backing_file(&self, ino: Ino, write: bool, truncate: bool) -> Result<(Arc<File>, bool)> {
        if !write {
            let clean = {
                let st = self.state.read();
                match &st.inode(ino)?.node {
                    Node::File(FileData::Clean(c)) => Some(*c),
                    Node::File(_) => None,
                    _ => return Err(Error::InvalidArgument("not a regular file".into())),
                }
            };
            if let Some(c) = clean {
                let path = self.shared.materialize(&c)?;
                let f = File::open(&path)
                    .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
                return Ok((Arc::new(f), false));
            }
        }
        if write && !truncate {
            self.check_writable()?;
            self.copy_up(ino)?;
        }
        let mut st = self.state.write();
        if st.inode(ino)?.kind() != Kind::File {
            return Err(Error::InvalidArgument("not a regular file".into()));
        }
        if write {
            self.check_writable()?;
            let (file, _) = self.own(&mut st, ino, truncate)?;
            if truncate {
                file.set_len(0).map_err(|e| Error::io("truncate", e))?;
                st.note_written(ino, None, Some(0))?;
            }
            return Ok((file, true));
        }
        match &st.inode(ino)?.node {
            Node::File(FileData::Clean(c)) => {
                let c = *c;
                drop(st);
                let path = self.shared.materialize(&c)?;
                let f = File::open(&path)
                    .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
                Ok((Arc::new(f), false))
            }
            _ => Ok((self.owned_file(&st, ino)?, true)),
        }
    }

    /// Tells the workspace that an engine wrote its own copy of `ino` (obtained from
    /// `backing_file`) up to byte `end`.
    pub fn wrote(&self, ino: Ino, end: u64) -> Result<()> {
        let mut st = self.state.write();
        st.note_written(ino, Some(end), None)
    }

    /// Tells the workspace that its own copy of `ino` was written through a file
    /// descriptor (by an engine); refreshes the size and marks the file changed.
    pub fn note_write(&self, ino: Ino) -> Result<()> {
        let mut st = self.state.write();
        let size = match &st.inode(ino)?.node {
            Node::File(FileData::Owned { id, .. }) => {
                let path = self.data_path(*id);
                std::fs::metadata(&path)
                    .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
                    .len()
            }
            _ => return Ok(()),
        };
        st.note_written(ino, None, Some(size))
    }

    /// The directory that names `ino` (its first name, for files with several).
    pub fn parent(&self, ino: Ino) -> Option<Ino> {
        let st = self.state.read();
        st.inodes.get(&ino).and_then(|i| i.parents.first().copied())
    }

    /// Counts an open file handle, which keeps an unlinked inode alive.
    pub fn open(&self, ino: Ino) -> Result<()> {
        let st = self.state.read();
        st.inode(ino)?.open.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Drops an open file handle.
    pub fn release(&self, ino: Ino) {
        let mut st = self.state.write();
        if let Some(i) = st.inodes.get_mut(&ino) {
            let _ = i
                .open
                .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
        }
        st.maybe_free(ino);
        self.remove_dead_files(&mut st);
    }

    /// The value of extended attribute `name`.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        {
            let st = self.state.read();
            if st.is_ready(ino) {
                let i = st.inode(ino)?;
                return i
                    .attrs
                    .xattrs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .ok_or(Error::NoAttr);
            }
        }
        let mut st = self.state.write();
        st.load_if_dir(&self.shared, ino)?;
        let i = st.inode(ino)?;
        i.attrs
            .xattrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or(Error::NoAttr)
    }

    /// Names of the extended attributes.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let mut st = self.state.write();
        st.load_if_dir(&self.shared, ino)?;
        Ok(st
            .inode(ino)?
            .attrs
            .xattrs
            .iter()
            .map(|(k, _)| k.clone())
            .collect())
    }

    /// Sets extended attribute `name`.
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        self.check_writable()?;
        if name.is_empty() || name.len() > 255 || name.contains(&0) {
            return Err(Error::InvalidArgument(
                "xattr name must be 1..=255 bytes without NUL".into(),
            ));
        }
        if value.len() > XATTR_VALUE_MAX {
            return Err(Error::InvalidArgument(format!(
                "xattr value of {} bytes",
                value.len()
            )));
        }
        let acl = if name == acl::ACCESS {
            Some(
                acl::effect(value)
                    .ok_or_else(|| Error::InvalidArgument("malformed POSIX ACL".into()))?,
            )
        } else {
            None
        };
        let mut st = self.state.write();
        st.load_if_dir(&self.shared, ino)?;
        let i = st.inode_mut(ino)?;
        let pos = i
            .attrs
            .xattrs
            .binary_search_by(|(k, _)| k.as_slice().cmp(name));
        match (pos, mode) {
            (Ok(_), XattrMode::Create) => return Err(Error::AlreadyExists("xattr".into())),
            (Err(_), XattrMode::Replace) => return Err(Error::NoAttr),
            // An access ACL sets the mode's permission bits; one that says no more than
            // the mode is not kept (as on ext4).
            (Ok(p), _) if acl.is_some_and(|a| a.minimal) => {
                i.attrs.xattrs.remove(p);
            }
            (Err(_), _) if acl.is_some_and(|a| a.minimal) => {}
            (Ok(p), _) => i.attrs.xattrs[p].1 = value.to_vec(),
            (Err(p), _) => i.attrs.xattrs.insert(p, (name.to_vec(), value.to_vec())),
        }
        if let Some(a) = acl {
            i.attrs.mode = (i.attrs.mode & !0o777) | a.perms;
        }
        i.ctime = now();
        st.touch(ino);
        Ok(())
    }

    /// Removes extended attribute `name`.
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.check_writable()?;
        let mut st = self.state.write();
        st.load_if_dir(&self.shared, ino)?;
        let i = st.inode_mut(ino)?;
        let p = i
            .attrs
            .xattrs
            .binary_search_by(|(k, _)| k.as_slice().cmp(name))
            .map_err(|_| Error::NoAttr)?;
        i.attrs.xattrs.remove(p);
        i.ctime = now();
        st.touch(ino);
        Ok(())
    }

    // ---- snapshots ----

    /// Freezes the current content as a new child of the base snapshot; the workspace
    /// then stands on it. Cost: O(changed paths × depth + changed bytes).
    pub fn snapshot(
        &self,
        label: Option<String>,
        annotations: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Snapshot> {
        self.check_writable()?;
        let _sync = self.sync_lock.lock();
        let _gc = self.shared.gc_lock.read();
        let start = Instant::now();
        let mut w = self.shared.store.writer();
        self.prehash(&mut w)?;
        let mut st = self.state.write();
        let mut changed = 0u64;
        let mut cleaned = Vec::new();
        let result = (|| {
            let tref = st.commit_dir(self, Ino::ROOT, &mut w, &mut changed, &mut cleaned)?;
            let id = self.shared.alloc_snapshot_id();
            let snap = Snapshot {
                id,
                parent: st.base,
                root: tref.fp,
                tree: tref.node,
                bytes: tref.bytes,
                label,
                created_ms: (now() / 1_000_000) as u64,
                annotations,
                metrics: Metrics {
                    latency_us: 0,
                    new_objects: w.new_objects,
                    new_bytes: w.new_bytes,
                    changed_paths: changed,
                },
            };
            Ok::<_, Error>(snap)
        })();
        // Results the commit did not use (files gone meanwhile) must not outlive it.
        st.prehashed.clear();
        let mut snap = match result {
            Ok(s) => s,
            Err(e) => {
                st.uncommit(&cleaned);
                return Err(e);
            }
        };
        snap.metrics.latency_us = start.elapsed().as_micros() as u64;
        let mut batch = Batch::new();
        snapshot::stage_insert(&mut batch, &snap);
        self.shared.stage_counters(&mut batch);
        let old = (st.base, st.base_root);
        st.base = Some(snap.id);
        st.base_root = snap.root;
        batch.put(
            Cf::Workspaces,
            self.id.key(),
            snapshot::encode_record(&self.make_record(&st, None)),
        );
        st.stage_journal_clear(self.id, &mut batch);
        if let Err(e) = w.commit(batch) {
            (st.base, st.base_root) = old;
            st.uncommit(&cleaned);
            return Err(e);
        }
        st.journal_cleared();
        self.remove_dead_files(&mut st);
        self.shared.count_snapshots(1, snap.bytes as i64);
        Ok(snap)
    }

    /// Hashes the changed own copies without holding the lock, so that a snapshot of a
    /// large change does not stall the workspace; the commit then uses each result whose
    /// file did not change meanwhile, and hashes the others itself.
    fn prehash(&self, w: &mut ObjectWriter<'_>) -> Result<()> {
        let pending = self.state.read().pending_files();
        if pending.is_empty() {
            return Ok(());
        }
        let mut done = Vec::with_capacity(pending.len());
        for (ino, id, writes) in pending {
            let path = self.data_path(id);
            let Ok(f) = File::open(&path) else { continue };
            let meta = f
                .metadata()
                .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
            let content = tree::store_file(w, f)?;
            done.push((
                ino,
                Prehashed {
                    id,
                    writes,
                    content,
                    mtime: file_mtime(&meta),
                },
            ));
        }
        self.state.write().prehashed = done.into_iter().collect();
        Ok(())
    }

    /// Switches to snapshot `id` in place. Refuses with `Dirty` when there are
    /// uncommitted changes, unless `discard`. O(1) in tree size: directories load lazily,
    /// and unchanged paths keep their inode numbers.
    pub fn checkout(&self, id: SnapshotId, discard: bool) -> Result<Invalidation> {
        let snap = snapshot::load(self.shared.store.backend().as_ref(), id)?;
        let _sync = self.sync_lock.lock();
        let mut st = self.state.write();
        if st.is_dirty() && !discard {
            return Err(Error::Dirty(self.id));
        }
        let old = (st.base, st.base_root);
        st.base = Some(id);
        st.base_root = snap.root;
        // Buffered: the new base survives a crash of the daemon (the log is in the page
        // cache) and, after a power cut, the workspace is back at the old one.
        let mut batch = Batch::new();
        batch.put(
            Cf::Workspaces,
            self.id.key(),
            snapshot::encode_record(&self.make_record(&st, None)),
        );
        st.stage_journal_clear(self.id, &mut batch);
        if let Err(e) = self
            .shared
            .store
            .backend()
            .write(batch, Durability::Buffered)
        {
            (st.base, st.base_root) = old;
            return Err(e);
        }
        st.journal_cleared();
        self.remove_dead_files(&mut st);
        let invalidation = st.known_entries();
        st.generation += 1;
        let generation = st.generation;
        let tref = TreeRef {
            node: snap.tree,
            fp: snap.root,
            bytes: snap.bytes,
        };
        let root = st.inode_mut(Ino::ROOT)?;
        root.generation = generation;
        if let Node::Dir { state, prev } = &mut root.node {
            let old = std::mem::replace(state, DirState::Unloaded(tref));
            if let DirState::Loaded { entries, .. } = old {
                *prev = Some(entries);
            }
        }
        Ok(invalidation)
    }

    /// Persists uncommitted changes (as a tree in the store) so that they survive closing
    /// and reopening the store. Called by `close`.
    pub fn save(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let _sync = self.sync_lock.lock();
        let _gc = self.shared.gc_lock.read();
        let mut st = self.state.write();
        let mut w = self.shared.store.writer();
        let mut changed = 0;
        let mut cleaned = Vec::new();
        let tref = match st.commit_dir(self, Ino::ROOT, &mut w, &mut changed, &mut cleaned) {
            Ok(t) => t,
            Err(e) => {
                st.uncommit(&cleaned);
                return Err(e);
            }
        };
        let head = (tref.fp != st.base_root).then_some(tref);
        let mut batch = Batch::new();
        batch.put(
            Cf::Workspaces,
            self.id.key(),
            snapshot::encode_record(&self.make_record(&st, head)),
        );
        st.stage_journal_clear(self.id, &mut batch);
        if let Err(e) = w.commit(batch) {
            st.uncommit(&cleaned);
            return Err(e);
        }
        st.journal_cleared();
        self.remove_dead_files(&mut st);
        Ok(())
    }

    /// Makes the workspace's current state durable without a commit: what `fsync`,
    /// `fdatasync` and `syncfs` inside the workspace promise. Writes the journal records
    /// of what changed since the last sync (`journal.rs`) in one synced batch; file data
    /// stays in the own copies (an engine syncs the file it was asked to first, and this
    /// syncs the directory holding them when new ones appeared). After a crash of the
    /// daemon the workspace reopens at this state or later.
    pub fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let _sync = self.sync_lock.lock();
        if self.data_created.swap(false, Relaxed) {
            let data = self.dir.join("data");
            if let Err(e) = File::open(&data).and_then(|d| d.sync_all()) {
                self.data_created.store(true, Relaxed);
                return Err(Error::io(format!("sync {}", data.display()), e));
            }
        }
        let (batch, puts, deletes) = {
            let mut st = self.state.write();
            if st.jdirty.is_empty() {
                return Ok(());
            }
            let dirty: Vec<Ino> = st.jdirty.drain().collect();
            let mut batch = Batch::new();
            let (mut puts, mut deletes) = (Vec::new(), Vec::new());
            for ino in &dirty {
                match st.journal_record(*ino) {
                    Ok(Some(v)) => {
                        let h = Hash::of(&v);
                        if st.journaled.get(ino) != Some(&h) {
                            batch.put(Cf::Journal, journal::key(self.id, *ino), v);
                            puts.push((*ino, h));
                        }
                    }
                    Ok(None) if st.journaled.contains_key(ino) => {
                        batch.delete(Cf::Journal, journal::key(self.id, *ino));
                        deletes.push(*ino);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        st.jdirty.extend(dirty);
                        return Err(e);
                    }
                }
            }
            if batch.is_empty() {
                return Ok(());
            }
            (batch, puts, deletes)
        };
        // Written without the workspace lock: file operations go on meanwhile, and what
        // they change waits in `jdirty` for the next sync (`sync_lock` keeps the order).
        let written = self.shared.store.backend().write(batch, Durability::Sync);
        let mut st = self.state.write();
        match written {
            Ok(()) => {
                st.journaled.extend(puts);
                for ino in deletes {
                    st.journaled.remove(&ino);
                }
                st.release_held();
                self.remove_dead_files(&mut st);
                Ok(())
            }
            Err(e) => {
                st.jdirty
                    .extend(puts.into_iter().map(|(ino, _)| ino).chain(deletes));
                Err(e)
            }
        }
    }

    // ---- helpers ----

    /// Makes sure `ino` has its own file (copy-up), returning it and whether it was
    /// copied now. With `empty`, the old content is not copied (O_TRUNC, truncate to 0).
    fn own(&self, st: &mut State, ino: Ino, empty: bool) -> Result<(Arc<File>, bool)> {
        let content = match &st.inode(ino)?.node {
            Node::File(FileData::Clean(c)) => *c,
            Node::File(FileData::Owned { .. }) => return Ok((self.owned_file(st, ino)?, false)),
            _ => return Err(Error::InvalidArgument("not a regular file".into())),
        };
        let id = self.next_file.fetch_add(1, Relaxed);
        let mut f = self.new_data_file(id)?;
        let size = if empty {
            0
        } else {
            let mtime = st.inode(ino)?.attrs.mtime;
            self.copy_content(&mut f, &content, mtime)?;
            content.size
        };
        let file = Arc::new(f);
        let committed = (!empty || content.size == 0).then_some(content);
        if let Node::File(data) = &mut st.inode_mut(ino)?.node {
            *data = FileData::Owned {
                id,
                size,
                committed,
                writes: 0,
            };
        }
        if committed.is_none() {
            st.touch(ino);
        }
        Ok((file, true))
    }

    /// Creates own-copy file `id`.
    fn new_data_file(&self, id: u64) -> Result<File> {
        let path = self.data_path(id);
        let create = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
        };
        self.data_created.store(true, Relaxed);
        let created = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let data = self.dir.join("data");
                std::fs::create_dir_all(&data)
                    .map_err(|e| Error::io(format!("create {}", data.display()), e))?;
                create()
            }
            other => other,
        };
        created.map_err(|e| Error::io(format!("create {}", path.display()), e))
    }

    /// Writes `content` into a new own copy, keeping the mtime: a copy-up changes
    /// nothing the caller can see.
    fn copy_content(&self, f: &mut File, content: &Content, mtime: Nanos) -> Result<()> {
        let mut out = std::io::BufWriter::with_capacity(256 << 10, &mut *f);
        tree::write_content(&self.shared.store, content, &mut out)?;
        out.flush().map_err(|e| Error::io("copy up", e))?;
        drop(out);
        f.set_modified(time_of(mtime))
            .map_err(|e| Error::io("copy up", e))
    }

    /// Copies a clean file into its own copy without holding the workspace lock, so
    /// that copying a large file does not stall every other operation; a no-op for a
    /// file that has its own copy already.
    fn copy_up(&self, ino: Ino) -> Result<()> {
        let (content, mtime) = {
            let st = self.state.read();
            let i = st.inode(ino)?;
            match &i.node {
                Node::File(FileData::Clean(c)) => (*c, i.attrs.mtime),
                _ => return Ok(()),
            }
        };
        let id = self.next_file.fetch_add(1, Relaxed);
        let mut f = self.new_data_file(id)?;
        if let Err(e) = self.copy_content(&mut f, &content, mtime) {
            let _ = std::fs::remove_file(self.data_path(id));
            return Err(e);
        }
        let mut st = self.state.write();
        let i = st.inode_mut(ino)?;
        match &i.node {
            Node::File(FileData::Clean(c)) if *c == content => {
                i.node = Node::File(FileData::Owned {
                    id,
                    size: content.size,
                    committed: Some(content),
                    writes: 0,
                });
            }
            // Copied or changed meanwhile: this copy is not needed.
            _ => st.dead_files.push(id),
        }
        self.remove_dead_files(&mut st);
        Ok(())
    }

    fn owned_file(&self, st: &State, ino: Ino) -> Result<Arc<File>> {
        // Opened per use, not cached: a workspace may own more files than the fd limit.
        match &st.inode(ino)?.node {
            Node::File(FileData::Owned { id, .. }) => {
                let path = self.data_path(*id);
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
                Ok(Arc::new(f))
            }
            _ => Err(Error::InvalidArgument("file has no own copy".into())),
        }
    }
}

/// Reads `len` bytes at `offset` of a stored content, touching only the chunks needed.
fn read_content(shared: &Shared, content: &Content, offset: u64, len: u32) -> Result<Vec<u8>> {
    if offset >= content.size || len == 0 {
        return Ok(Vec::new());
    }
    let end = (offset + len as u64).min(content.size);
    let mut out = Vec::with_capacity((end - offset) as usize);
    let mut pos = 0u64;
    for (hash, clen) in tree::chunks_of(&shared.store, content)? {
        let (cstart, cend) = (pos, pos + clen as u64);
        pos = cend;
        if cend <= offset {
            continue;
        }
        if cstart >= end {
            break;
        }
        let data = shared.store.get(&hash)?;
        let from = offset.saturating_sub(cstart) as usize;
        let to = ((end - cstart) as usize).min(data.len());
        if from > to {
            return Err(Error::Corrupt {
                hash,
                reason: "chunk shorter than its list says".into(),
            });
        }
        out.extend_from_slice(&data[from..to]);
    }
    Ok(out)
}

fn file_mtime(meta: &std::fs::Metadata) -> Nanos {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

fn file_ctime(meta: &std::fs::Metadata) -> Nanos {
    use std::os::unix::fs::MetadataExt;
    meta.ctime() * 1_000_000_000 + meta.ctime_nsec()
}

fn time_of(ns: Nanos) -> std::time::SystemTime {
    let epoch = std::time::UNIX_EPOCH;
    if ns >= 0 {
        epoch + std::time::Duration::from_nanos(ns as u64)
    } else {
        epoch - std::time::Duration::from_nanos(ns.unsigned_abs())
    }
}

fn set_file_mtime(path: &Path, mtime: Nanos) -> Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(
        mtime.div_euclid(1_000_000_000),
        mtime.rem_euclid(1_000_000_000),
    );
    // One syscall, no open: atime is left alone.
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &t,
        UtimensatFlags::FollowSymlink,
    )
    .map_err(|e| Error::io(format!("set mtime of {}", path.display()), e.into()))
}

impl State {
    /// The own-copy id of a file that has one.
    fn list(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        self.entries(ino)?
            .iter()
            .map(|(name, child)| {
                Ok(DirEntry {
                    kind: self.inode(*child)?.kind(),
                    name: name.clone(),
                    ino: *child,
                })
            })
            .collect()
    }

    /// Own copies a commit would hash now: (inode, file id, writes), found by walking
    /// only dirty directories.
    fn pending_files(&self) -> Vec<(Ino, u64, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![Ino::ROOT];
        while let Some(dir) = stack.pop() {
            if !self.needs_commit(dir) {
                continue;
            }
            let Ok(entries) = self.entries(dir) else {
                continue;
            };
            for child in entries.values() {
                match self.inodes.get(child).map(|i| &i.node) {
                    Some(Node::File(FileData::Owned {
                        id,
                        committed: None,
                        writes,
                        ..
                    })) => out.push((*child, *id, *writes)),
                    Some(Node::Dir { .. }) => stack.push(*child),
                    _ => {}
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The own-copy id of a file that has one.
    fn owned_id(&self, ino: Ino) -> Option<u64> {
        match self.inodes.get(&ino).map(|i| &i.node) {
            Some(Node::File(FileData::Owned { id, .. })) => Some(*id),
            _ => None,
        }
    }

    /// Records what the own copy holds; a difference means it was written behind our
    /// back (passthrough), so the file counts as changed.
    fn sync_owned(&mut self, ino: Ino, real_size: u64, real_mtime: Nanos) {
        let Some(i) = self.inodes.get_mut(&ino) else {
            return;
        };
        let changed = match &mut i.node {
            Node::File(FileData::Owned {
                size,
                committed,
                writes,
                ..
            }) => {
                let changed = *size != real_size || i.attrs.mtime != real_mtime;
                if changed {
                    *size = real_size;
                    *committed = None;
                    *writes += 1;
                }
                changed
            }
            _ => false,
        };
        if changed {
            i.attrs.mtime = real_mtime;
            self.touch(ino);
        }
    }

    /// Every (directory, name) and inode the kernel may have cached: what an engine must
    /// invalidate when the tree under it changes. O(loaded directories).
    fn known_entries(&self) -> Invalidation {
        let mut inv = Invalidation::default();
        let mut stack = vec![Ino::ROOT];
        inv.inodes.push(Ino::ROOT);
        while let Some(dir) = stack.pop() {
            let Ok(entries) = self.entries(dir) else {
                continue;
            };
            for (name, &child) in entries {
                let Some(i) = self.inodes.get(&child) else {
                    continue;
                };
                if i.nlookup.load(Relaxed) > 0 {
                    inv.entries.push((dir, name.clone()));
                    inv.inodes.push(child);
                }
                if matches!(
                    i.node,
                    Node::Dir {
                        state: DirState::Loaded { .. },
                        ..
                    }
                ) {
                    stack.push(child);
                }
            }
        }
        // Children before their parents: once a directory's dentry is invalidated, the
        // kernel can no longer find its children's dentries to invalidate them.
        inv.entries.reverse();
        inv
    }

    /// True when `ino` can be served under the shared lock: it exists and is not a
    /// directory waiting to be loaded or revalidated after a checkout.
    fn is_ready(&self, ino: Ino) -> bool {
        match self.inodes.get(&ino) {
            Some(Inode {
                node: Node::Dir { state, .. },
                generation,
                ..
            }) => {
                matches!(state, DirState::Loaded { .. })
                    && (ino == Ino::ROOT || *generation >= self.generation)
            }
            Some(_) => true,
            None => false,
        }
    }

    fn inode(&self, ino: Ino) -> Result<&Inode> {
        self.inodes
            .get(&ino)
            .ok_or_else(|| Error::NoEntry(ino.to_string()))
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode> {
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| Error::NoEntry(ino.to_string()))
    }

    fn is_dirty(&self) -> bool {
        match self.inodes.get(&Ino::ROOT).map(|i| &i.node) {
            Some(Node::Dir {
                state: DirState::Unloaded(t),
                ..
            }) => t.fp != self.base_root,
            Some(Node::Dir {
                state: DirState::Loaded { clean: Some(t), .. },
                ..
            }) => t.fp != self.base_root,
            _ => true,
        }
    }

    fn entries(&self, ino: Ino) -> Result<&BTreeMap<Name, Ino>> {
        match &self.inode(ino)?.node {
            Node::Dir {
                state: DirState::Loaded { entries, .. },
                ..
            } => Ok(entries),
            Node::Dir { .. } => Err(Error::InvalidArgument(format!("{ino} is not loaded"))),
            _ => Err(Error::NotADirectory(ino.to_string())),
        }
    }

    fn entries_mut(&mut self, ino: Ino) -> Result<&mut BTreeMap<Name, Ino>> {
        match &mut self.inode_mut(ino)?.node {
            Node::Dir {
                state: DirState::Loaded { entries, .. },
                ..
            } => Ok(entries),
            Node::Dir { .. } => Err(Error::InvalidArgument(format!("{ino} is not loaded"))),
            _ => Err(Error::NotADirectory(ino.to_string())),
        }
    }

    fn alloc(&mut self, inode: Inode) -> Ino {
        let ino = Ino(self.next_ino);
        self.next_ino += 1;
        self.inodes.insert(ino, inode);
        ino
    }

    fn load_if_dir(&mut self, shared: &Shared, ino: Ino) -> Result<()> {
        if self.inode(ino)?.kind() == Kind::Dir {
            self.ensure_loaded(shared, ino)?;
        }
        Ok(())
    }

    /// Loads a directory's node from the store, creating (or, after a checkout, reusing)
    /// inodes for its entries.
    fn ensure_loaded(&mut self, shared: &Shared, ino: Ino) -> Result<()> {
        if ino != Ino::ROOT {
            let i = self.inode(ino)?;
            if i.generation < self.generation && matches!(i.node, Node::Dir { .. }) {
                self.revalidate(shared, ino)?;
            }
        }
        let (tref, prev) = match &mut self.inode_mut(ino)?.node {
            Node::Dir {
                state: DirState::Unloaded(t),
                prev,
            } => (*t, prev.take()),
            Node::Dir { .. } => return Ok(()),
            _ => return Err(Error::NotADirectory(ino.to_string())),
        };
        let node = shared.node(&tref.node)?;
        let generation = self.generation;
        let mut prev = prev.unwrap_or_default();
        let mut entries = BTreeMap::new();
        let mut subdirs = 0;
        // Inodes of the old entries that lost their name here. They are orphaned only
        // after every new entry is placed: a hard-linked file had several old names in
        // this directory, and one of them may have been reused for a new entry.
        let mut dropped = Vec::new();
        for (name, kind) in node.entries.iter() {
            let (name, kind) = (name.clone(), kind.clone());
            let mut reuse = prev.remove(&name);
            if let Some(old) = reuse.filter(|old| !self.reusable(*old, &kind)) {
                dropped.push(old);
                reuse = None;
            }
            if matches!(kind, EntryKind::Dir { .. }) {
                subdirs += 1;
            }
            let child = match reuse {
                Some(old) => {
                    self.reuse(old, ino, kind);
                    old
                }
                None => {
                    let inode = inode_from_entry(kind, ino, &name, generation);
                    self.alloc(inode)
                }
            };
            entries.insert(name, child);
        }
        dropped.extend(prev.into_values());
        let placed: rustc_hash::FxHashSet<Ino> = entries.values().copied().collect();
        for old in dropped {
            if !placed.contains(&old) {
                self.orphan(old, ino);
            }
        }
        let i = self.inode_mut(ino)?;
        i.attrs = node.attrs.clone();
        i.atime = i.attrs.mtime;
        i.ctime = i.attrs.mtime;
        i.node = Node::Dir {
            state: DirState::Loaded {
                entries,
                clean: Some(tref),
                base: Some(tref.node),
                subdirs,
            },
            prev: None,
        };
        Ok(())
    }

    /// A directory from before a checkout, reached without walking from the root (a
    /// process's working directory): find its path in the new tree, which re-points it if
    /// the path is still a directory there; otherwise it becomes an empty, removed one.
    fn revalidate(&mut self, shared: &Shared, ino: Ino) -> Result<()> {
        let mut names = Vec::new();
        let mut cur = ino;
        let mut found = true;
        while cur != Ino::ROOT {
            let i = self.inode(cur)?;
            match (i.parents.first(), &i.name) {
                (Some(&p), Some(n)) if names.len() < 4096 => {
                    names.push(n.clone());
                    cur = p;
                }
                _ => {
                    found = false;
                    break;
                }
            }
        }
        let mut at = Ino::ROOT;
        if found {
            for n in names.iter().rev() {
                match self.lookup(shared, at, n) {
                    Ok(child) => at = child,
                    Err(_) => {
                        found = false;
                        break;
                    }
                }
            }
        }
        if !found || at != ino {
            let generation = self.generation;
            let i = self.inode_mut(ino)?;
            i.generation = generation;
            i.parents.clear();
            i.node = Node::empty_dir();
        }
        Ok(())
    }

    /// Whether inode `old` (from before a checkout) can stand for `entry` now: the same
    /// directory path, or an identical file not already claimed in this generation.
    fn reusable(&self, old: Ino, entry: &EntryKind) -> bool {
        let Some(i) = self.inodes.get(&old) else {
            return false;
        };
        if i.generation == self.generation || (i.open.load(Relaxed) > 0 && i.kind() == Kind::File) {
            // Claimed already in this generation, or open: an open file keeps what it
            // opened, as if the path had been replaced by a rename.
            return false;
        }
        match (&i.node, entry) {
            (Node::Dir { .. }, EntryKind::Dir { .. }) => true,
            (Node::File(data), EntryKind::File { attrs, content }) => {
                let same = match data {
                    FileData::Clean(c) => c == content,
                    FileData::Owned { committed, .. } => committed.as_ref() == Some(content),
                };
                same && i.attrs.mode == attrs.mode
                    && i.attrs.uid == attrs.uid
                    && i.attrs.gid == attrs.gid
            }
            (Node::Symlink(t), EntryKind::Symlink { target, .. }) => t == target,
            _ => false,
        }
    }

    fn reuse(&mut self, old: Ino, parent: Ino, entry: EntryKind) {
        let generation = self.generation;
        let Some(i) = self.inodes.get_mut(&old) else {
            return;
        };
        i.generation = generation;
        i.parents = vec![parent];
        match entry {
            EntryKind::Dir { node, fp, bytes } => {
                if let Node::Dir { state, prev } = &mut i.node {
                    let was =
                        std::mem::replace(state, DirState::Unloaded(TreeRef { node, fp, bytes }));
                    *prev = match was {
                        DirState::Loaded { entries, .. } => Some(entries),
                        DirState::Unloaded(_) => prev.take(),
                    };
                }
            }
            EntryKind::File { attrs, .. }
            | EntryKind::Symlink { attrs, .. }
            | EntryKind::Special { attrs, .. } => {
                i.attrs = attrs;
            }
        }
    }

    /// `old` no longer has a name under `parent` (checkout); free it if nobody knows it.
    fn orphan(&mut self, old: Ino, parent: Ino) {
        if let Some(i) = self.inodes.get_mut(&old) {
            if let Some(p) = i.parents.iter().position(|&p| p == parent) {
                i.parents.swap_remove(p);
            }
            if i.parents.is_empty() && i.nlookup.load(Relaxed) == 0 && i.open.load(Relaxed) == 0 {
                self.free_tree(old);
            }
        }
    }

    /// Removes `ino` and, for a directory, every unreferenced inode below it.
    fn free_tree(&mut self, ino: Ino) {
        let Some(i) = self.inodes.remove(&ino) else {
            return;
        };
        // A record it may have goes with the next sync.
        self.jdirty.insert(ino);
        match i.node {
            Node::File(FileData::Owned { id, .. }) => self.drop_file(ino, id),
            Node::Dir {
                state: DirState::Loaded { entries, .. },
                prev,
            } => {
                for child in entries
                    .into_values()
                    .chain(prev.into_iter().flat_map(|p| p.into_values()))
                {
                    self.orphan(child, ino);
                }
            }
            Node::Dir { prev: Some(p), .. } => {
                for child in p.into_values() {
                    self.orphan(child, ino);
                }
            }
            _ => {}
        }
    }

    /// Frees an inode that has no name, no kernel reference and no open handle.
    /// An inode with no name and no open handle can never be read again: its own copy
    /// goes at once (the kernel may still hold a lookup of it for a while, but the disk
    /// space of an unlinked, closed file must come back now, as on any filesystem).
    fn maybe_free(&mut self, ino: Ino) {
        let Some(i) = self.inodes.get_mut(&ino) else {
            return;
        };
        if ino == Ino::ROOT || !i.parents.is_empty() || i.open.load(Relaxed) != 0 {
            return;
        }
        if i.nlookup.load(Relaxed) == 0 {
            self.free_tree(ino);
        } else if let Node::File(FileData::Owned { id, .. }) = i.node {
            i.node = Node::File(FileData::Clean(Content {
                hash: Hash::of(b""),
                chunked: false,
                size: 0,
            }));
            self.drop_file(ino, id);
            self.jdirty.insert(ino);
        }
    }

    fn lookup(&mut self, shared: &Shared, parent: Ino, name: &Name) -> Result<Ino> {
        self.ensure_loaded(shared, parent)?;
        let ino = *self
            .entries(parent)?
            .get(name)
            .ok_or_else(|| Error::NoEntry(name.to_string()))?;
        self.load_if_dir(shared, ino)?;
        Ok(ino)
    }

    fn stat(&mut self, shared: &Shared, ino: Ino) -> Result<Stat> {
        self.load_if_dir(shared, ino)?;
        self.stat_loaded(ino)
    }

    /// Attributes of an inode that needs no loading (see `is_ready`).
    fn stat_loaded(&self, ino: Ino) -> Result<Stat> {
        let i = self.inode(ino)?;
        let (size, nlink) = match &i.node {
            Node::File(FileData::Clean(c)) => (c.size, i.parents.len().max(1)),
            Node::File(FileData::Owned { size, .. }) => (*size, i.parents.len()),
            Node::Dir {
                state: DirState::Loaded { subdirs, .. },
                ..
            } => (4096, 2 + *subdirs as usize),
            Node::Dir { .. } => (4096, 2),
            Node::Symlink(t) => (t.len() as u64, i.parents.len()),
            Node::Special(_) => (0, i.parents.len()),
        };
        let nlink = if i.kind() != Kind::Dir && i.parents.is_empty() {
            0
        } else {
            nlink
        };
        Ok(Stat {
            ino,
            kind: i.kind(),
            size,
            mode: i.attrs.mode,
            uid: i.attrs.uid,
            gid: i.attrs.gid,
            nlink: nlink as u32,
            atime: i.atime,
            mtime: i.attrs.mtime,
            ctime: i.ctime,
            rdev: match &i.node {
                Node::Special(s) => s.rdev(),
                _ => 0,
            },
            blocks: size.div_ceil(512),
        })
    }

    /// Marks `ino` changed: the directories that name it (and their ancestors) are dirty.
    fn touch(&mut self, ino: Ino) {
        let is_dir = matches!(
            self.inodes.get(&ino).map(|i| &i.node),
            Some(Node::Dir { .. })
        );
        self.jdirty.insert(ino);
        if is_dir {
            self.dirty_dir(ino);
        } else if let Some(i) = self.inodes.get(&ino) {
            for p in i.parents.clone() {
                // Its parents record it (by value, or by inode once it is journaled).
                self.jdirty.insert(p);
                self.dirty_dir(p);
            }
        }
    }

    fn dirty_dir(&mut self, mut ino: Ino) {
        loop {
            let Some(i) = self.inodes.get_mut(&ino) else {
                return;
            };
            match &mut i.node {
                Node::Dir {
                    state: DirState::Loaded { clean, .. },
                    ..
                } => {
                    if clean.take().is_none() && ino != Ino::ROOT {
                        // Already dirty: by the invariant, so are its ancestors.
                        return;
                    }
                }
                _ => return,
            }
            // Now journaled: it needs a record, and its parent refers to it by inode.
            let parent = i.parents.first().copied();
            self.jdirty.insert(ino);
            match parent {
                Some(p) => {
                    self.jdirty.insert(p);
                    ino = p;
                }
                None => return,
            }
        }
    }

    /// A directory's entries changed: update its times and mark it dirty.
    fn touch_entries(&mut self, dir: Ino, t: Nanos) {
        if let Some(i) = self.inodes.get_mut(&dir) {
            i.attrs.mtime = t;
            i.ctime = t;
        }
        self.jdirty.insert(dir);
        self.dirty_dir(dir);
    }

    fn adjust_subdirs(&mut self, dir: Ino, delta: i32) {
        if let Some(Inode {
            node:
                Node::Dir {
                    state: DirState::Loaded { subdirs, .. },
                    ..
                },
            ..
        }) = self.inodes.get_mut(&dir)
        {
            *subdirs = subdirs.saturating_add_signed(delta);
        }
    }

    fn relink(&mut self, ino: Ino, from: Ino, to: Ino, new_name: &Name) -> Result<()> {
        let i = self.inode_mut(ino)?;
        if let Some(p) = i.parents.iter().position(|&p| p == from) {
            i.parents[p] = to;
        }
        if i.name.is_some() {
            i.name = Some(new_name.clone());
        }
        // The moved entry's encoding changes in both directories.
        self.touch(ino);
        Ok(())
    }

    fn is_ancestor(&self, candidate: Ino, mut ino: Ino) -> Result<bool> {
        loop {
            if ino == candidate {
                return Ok(true);
            }
            match self.inode(ino)?.parents.first() {
                Some(&p) => ino = p,
                None => return Ok(false),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_new(
        &mut self,
        shared: &Shared,
        parent: Ino,
        name: &Name,
        node: Node,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Ino> {
        self.ensure_loaded(shared, parent)?;
        if self.inode(parent)?.parents.is_empty() && parent != Ino::ROOT {
            return Err(Error::NoEntry(format!("{parent} was removed")));
        }
        if self.entries(parent)?.contains_key(name) {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        let t = now();
        let is_dir = matches!(node, Node::Dir { .. });
        // A set-group-ID directory gives new entries its group, and new subdirectories
        // its set-group-ID bit (as every Linux filesystem does; the kernel leaves it to
        // FUSE filesystems).
        let parent_attrs = &self.inode(parent)?.attrs;
        let (mode, gid) = if parent_attrs.mode & 0o2000 != 0 {
            (if is_dir { mode | 0o2000 } else { mode }, parent_attrs.gid)
        } else {
            (mode, gid)
        };
        let generation = self.generation;
        let ino = self.alloc(Inode {
            node,
            attrs: Attrs {
                mode: mode & 0o7777,
                uid,
                gid,
                mtime: t,
                xattrs: Vec::new(),
            },
            atime: t,
            ctime: t,
            parents: vec![parent],
            name: is_dir.then(|| name.clone()),
            nlookup: AtomicU64::new(0),
            open: AtomicU32::new(0),
            generation,
        });
        self.entries_mut(parent)?.insert(name.clone(), ino);
        if is_dir {
            self.adjust_subdirs(parent, 1);
        }
        // A new directory is dirty from the start: it needs a record of its own.
        self.jdirty.insert(ino);
        self.touch_entries(parent, t);
        Ok(ino)
    }

    /// Removes the name `parent/name` of `ino`; frees `ino` if that was its last name
    /// and nothing holds it.
    fn detach(&mut self, parent: Ino, name: &Name, ino: Ino) {
        let t = now();
        if let Ok(entries) = self.entries_mut(parent) {
            entries.remove(name);
        }
        let is_dir = matches!(
            self.inodes.get(&ino).map(|i| &i.node),
            Some(Node::Dir { .. })
        );
        if is_dir {
            self.adjust_subdirs(parent, -1);
        }
        if let Some(i) = self.inodes.get_mut(&ino) {
            if let Some(p) = i.parents.iter().position(|&p| p == parent) {
                i.parents.swap_remove(p);
            }
            i.ctime = t;
        }
        self.touch_entries(parent, t);
        // Other names of a hard-linked file encode its (changed) link count nowhere, but
        // its ctime changed; mark them so the next snapshot sees a consistent state.
        self.touch(ino);
        self.maybe_free(ino);
    }

    /// Marks a file's own copy changed. `Some(end)`: a write reached `end`; `None` with
    /// `exact`: the size is exactly what the own copy holds now.
    /// Times are not set here: the own copy's mtime and ctime are what stat reports, and
    /// a flush or open that wrote nothing must not move them.
    fn note_written(&mut self, ino: Ino, end: Option<u64>, exact: Option<u64>) -> Result<()> {
        let i = self.inode_mut(ino)?;
        if let Node::File(FileData::Owned {
            size,
            committed,
            writes,
            ..
        }) = &mut i.node
        {
            *writes += 1;
            if let Some(end) = end {
                *size = (*size).max(end);
            }
            if let Some(exact) = exact {
                *size = exact;
            }
            *committed = None;
        }
        self.touch(ino);
        Ok(())
    }

    /// Encodes a directory, recursing only into dirty subdirectories and hashing only
    /// changed files. `cleaned` records what was marked clean (with a directory's base
    /// before), for `uncommit`.
    fn commit_dir(
        &mut self,
        ws: &Workspace,
        ino: Ino,
        w: &mut ObjectWriter<'_>,
        changed: &mut u64,
        cleaned: &mut Vec<Cleaned>,
    ) -> Result<TreeRef> {
        let (pending, base) = match &self.inode(ino)?.node {
            Node::Dir {
                state: DirState::Unloaded(t),
                ..
            } => return Ok(*t),
            Node::Dir {
                state: DirState::Loaded { clean: Some(t), .. },
                ..
            } => return Ok(*t),
            Node::Dir {
                state: DirState::Loaded { entries, base, .. },
                ..
            } => {
                let pending: Vec<Ino> = entries
                    .values()
                    .copied()
                    .filter(|c| self.needs_commit(*c))
                    .collect();
                (pending, *base)
            }
            _ => return Err(Error::NotADirectory(ino.to_string())),
        };
        // Children first: dirty subdirectories and written files.
        for child in pending {
            if self.inode(child)?.kind() == Kind::Dir {
                self.commit_dir(ws, child, w, changed, cleaned)?;
            } else {
                self.commit_file(ws, child, w, cleaned)?;
            }
        }
        // Then encode from borrowed entries: no copies of names or attributes.
        let enc = {
            let i = self.inode(ino)?;
            let entries = self.entries(ino)?;
            let mut refs = Vec::with_capacity(entries.len());
            for (name, child) in entries {
                refs.push((name, self.entry_ref(*child)?));
            }
            let enc = tree::encode_dir(&i.attrs, &refs);
            *changed += match base {
                Some(h) => tree::count_changes(&ws.shared.store, &h, &enc)?,
                None => refs.len() as u64,
            };
            enc
        };
        let tref = enc.store(w)?;
        if let Node::Dir {
            state: DirState::Loaded { clean, base, .. },
            ..
        } = &mut self.inode_mut(ino)?.node
        {
            *clean = Some(tref);
            cleaned.push(Cleaned {
                ino,
                base: base.replace(tref.node),
            });
        }
        Ok(tref)
    }

    /// True for a dirty directory or a file written since its last commit.
    fn needs_commit(&self, ino: Ino) -> bool {
        matches!(
            self.inodes.get(&ino).map(|i| &i.node),
            Some(Node::Dir {
                state: DirState::Loaded { clean: None, .. },
                ..
            }) | Some(Node::File(FileData::Owned {
                committed: None,
                ..
            }))
        )
    }

    /// The committed form of a child, borrowed (children are committed first).
    fn entry_ref(&self, ino: Ino) -> Result<EntryRef<'_>> {
        let i = self.inode(ino)?;
        let uncommitted = || Error::InvalidArgument(format!("{ino} is not committed"));
        Ok(match &i.node {
            Node::Dir {
                state: DirState::Unloaded(t),
                ..
            }
            | Node::Dir {
                state: DirState::Loaded { clean: Some(t), .. },
                ..
            } => EntryRef::Dir(*t),
            Node::Dir { .. } => return Err(uncommitted()),
            Node::File(FileData::Clean(c))
            | Node::File(FileData::Owned {
                committed: Some(c), ..
            }) => EntryRef::File {
                attrs: &i.attrs,
                content: *c,
            },
            Node::File(_) => return Err(uncommitted()),
            Node::Symlink(target) => EntryRef::Symlink {
                attrs: &i.attrs,
                target,
            },
            Node::Special(special) => EntryRef::Special {
                attrs: &i.attrs,
                special: *special,
            },
        })
    }

    fn commit_file(
        &mut self,
        ws: &Workspace,
        ino: Ino,
        w: &mut ObjectWriter<'_>,
        cleaned: &mut Vec<Cleaned>,
    ) -> Result<Content> {
        let (id, writes) = match &self.inode(ino)?.node {
            Node::File(FileData::Clean(c)) => return Ok(*c),
            Node::File(FileData::Owned {
                committed: Some(c), ..
            }) => return Ok(*c),
            Node::File(FileData::Owned { id, writes, .. }) => (*id, *writes),
            _ => return Err(Error::InvalidArgument("not a file".into())),
        };
        if let Some(pre) = self.prehashed.remove(&ino)
            && pre.writes == writes
            && pre.id == id
        {
            let i = self.inode_mut(ino)?;
            i.attrs.mtime = pre.mtime;
            if let Node::File(FileData::Owned {
                committed, size, ..
            }) = &mut i.node
            {
                *committed = Some(pre.content);
                *size = pre.content.size;
            }
            cleaned.push(Cleaned { ino, base: None });
            return Ok(pre.content);
        }
        let path = ws.data_path(id);
        let f = File::open(&path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let meta = f
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
        self.inode_mut(ino)?.attrs.mtime = file_mtime(&meta);
        let content = tree::store_file(w, f)?;
        if let Node::File(FileData::Owned {
            committed, size, ..
        }) = &mut self.inode_mut(ino)?.node
        {
            *committed = Some(content);
            *size = content.size;
        }
        cleaned.push(Cleaned { ino, base: None });
        Ok(content)
    }

    /// Stages the deletion of every journal record (the batch commits or moves the
    /// workspace, leaving nothing uncommitted that a record would describe).
    fn stage_journal_clear(&self, ws: WorkspaceId, batch: &mut Batch) {
        for ino in self.journaled.keys() {
            batch.delete(Cf::Journal, journal::key(ws, *ino));
        }
    }

    /// The batch from `stage_journal_clear` landed.
    fn journal_cleared(&mut self) {
        self.journaled.clear();
        self.jdirty.clear();
        self.release_held();
    }

    /// Own copy `id` of freed inode `ino` is garbage, once no journal record names it.
    fn drop_file(&mut self, ino: Ino, id: u64) {
        if self.journaled.contains_key(&ino) {
            self.held_files.push((ino, id));
        } else {
            self.dead_files.push(id);
        }
    }

    /// Moves the held own copies whose records are gone to the dead ones.
    fn release_held(&mut self) {
        let journaled = &self.journaled;
        let (keep, free): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held_files)
            .into_iter()
            .partition(|(ino, _)| journaled.contains_key(ino));
        self.held_files = keep;
        self.dead_files.extend(free.into_iter().map(|(_, id)| id));
    }

    /// The journal record `ino` should have now; `None` when it should have none (it is
    /// committed, recorded by value in its directory, or gone).
    fn journal_record(&self, ino: Ino) -> Result<Option<Vec<u8>>> {
        let Some(i) = self.inodes.get(&ino) else {
            return Ok(None);
        };
        if i.parents.is_empty() && ino != Ino::ROOT {
            return Ok(None);
        }
        match &i.node {
            Node::Dir {
                state:
                    DirState::Loaded {
                        entries,
                        clean: None,
                        ..
                    },
                ..
            } => {
                let mut by_value = Vec::with_capacity(entries.len());
                let mut linked = Vec::new();
                for (name, &child) in entries {
                    if self.needs_commit(child) {
                        linked.push((name, child));
                    } else {
                        by_value.push((name, self.entry_ref(child)?));
                    }
                }
                Ok(Some(journal::encode_dir(&i.attrs, &by_value, &linked)))
            }
            Node::File(FileData::Owned {
                id,
                committed: None,
                ..
            }) => {
                // The mtime comes from the own copy at recovery; left out here, a write
                // alone does not change the record.
                let attrs = Attrs {
                    mtime: 0,
                    ..i.attrs.clone()
                };
                Ok(Some(journal::encode_file(&attrs, *id)))
            }
            _ => Ok(None),
        }
    }

    /// Rebuilds the inode table from journal records (the root's among them), keeping
    /// the journaled inodes' numbers; returns the next free own-copy id. Own copies no
    /// record names are deleted. A record that names a missing own copy or record lost
    /// that entry to a change made after the last sync (an unlink): the entry is left out.
    fn recover(&mut self, data: &Path, records: &FxHashMap<Ino, journal::Record>) -> Result<u64> {
        use journal::{Child, Record};
        self.next_ino = records.keys().map(|i| i.0).max().unwrap_or(1) + 1;
        let mut owned = FxHashSet::default();
        let mut stack = vec![Ino::ROOT];
        self.inodes
            .insert(Ino::ROOT, loaded_dir_inode(None, Attrs::default()));
        let mut used = FxHashSet::default();
        while let Some(dir) = stack.pop() {
            used.insert(dir);
            let Some(Record::Dir {
                attrs,
                entries: recs,
            }) = records.get(&dir)
            else {
                continue;
            };
            let mut entries = BTreeMap::new();
            let mut subdirs = 0;
            for (name, child) in recs {
                let ino = match child {
                    Child::Entry(kind) => {
                        if matches!(kind, EntryKind::Dir { .. }) {
                            subdirs += 1;
                        }
                        let inode = inode_from_entry(kind.clone(), dir, name, 0);
                        self.alloc(inode)
                    }
                    Child::Inode(c) => match records.get(c) {
                        Some(Record::Dir { attrs, .. })
                            if *c != Ino::ROOT && !self.inodes.contains_key(c) =>
                        {
                            let i = loaded_dir_inode(Some((dir, name.clone())), attrs.clone());
                            self.inodes.insert(*c, i);
                            stack.push(*c);
                            subdirs += 1;
                            *c
                        }
                        Some(Record::File { .. }) if self.inodes.contains_key(c) => {
                            // Another name of a hard-linked file.
                            self.inode_mut(*c)?.parents.push(dir);
                            *c
                        }
                        Some(Record::File { attrs, own }) => {
                            let Ok(meta) = std::fs::metadata(data.join(own.to_string())) else {
                                tracing::warn!(ino = %c, own, "journaled file lost its own copy after the last sync; left out");
                                continue;
                            };
                            owned.insert(*own);
                            used.insert(*c);
                            let mut attrs = attrs.clone();
                            attrs.mtime = file_mtime(&meta);
                            self.inodes.insert(
                                *c,
                                Inode {
                                    node: Node::File(FileData::Owned {
                                        id: *own,
                                        size: meta.len(),
                                        committed: None,
                                        writes: 0,
                                    }),
                                    atime: attrs.mtime,
                                    ctime: file_ctime(&meta),
                                    attrs,
                                    parents: vec![dir],
                                    name: None,
                                    nlookup: AtomicU64::new(0),
                                    open: AtomicU32::new(0),
                                    generation: 0,
                                },
                            );
                            *c
                        }
                        _ => {
                            tracing::warn!(dir = %dir, child = %c, "journal entry without a usable record; left out");
                            continue;
                        }
                    },
                };
                entries.insert(name.clone(), ino);
            }
            let i = self.inode_mut(dir)?;
            i.attrs = attrs.clone();
            i.atime = attrs.mtime;
            i.ctime = attrs.mtime;
            i.node = Node::Dir {
                state: DirState::Loaded {
                    entries,
                    clean: None,
                    base: None,
                    subdirs,
                },
                prev: None,
            };
        }
        // Records nothing reached are stale: the next sync deletes them.
        self.jdirty = records
            .keys()
            .filter(|k| !used.contains(k))
            .copied()
            .collect();
        let mut next_file = 1;
        if let Ok(files) = std::fs::read_dir(data) {
            for f in files.flatten() {
                let id = f.file_name().to_str().and_then(|n| n.parse::<u64>().ok());
                match id {
                    Some(id) if owned.contains(&id) => next_file = next_file.max(id + 1),
                    _ => {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
        }
        Ok(next_file)
    }

    /// Undoes the clean marks of a commit that failed to write. A directory's base goes
    /// back too: the node the failed commit encoded was never stored.
    fn uncommit(&mut self, cleaned: &[Cleaned]) {
        for c in cleaned {
            if let Some(i) = self.inodes.get_mut(&c.ino) {
                match &mut i.node {
                    Node::Dir {
                        state: DirState::Loaded { clean, base, .. },
                        ..
                    } => {
                        *clean = None;
                        *base = c.base;
                    }
                    Node::File(FileData::Owned { committed, .. }) => *committed = None,
                    _ => {}
                }
            }
        }
    }
}

impl Workspace {
    /// Deletes the own copies of freed inodes.
    fn remove_dead_files(&self, st: &mut State) {
        for id in std::mem::take(&mut st.dead_files) {
            let path = self.data_path(id);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "could not remove unlinked file data");
            }
        }
    }
}

fn inode_from_entry(kind: EntryKind, parent: Ino, name: &Name, generation: u64) -> Inode {
    let (node, attrs) = match kind {
        EntryKind::Dir { node, fp, bytes } => {
            let tref = TreeRef { node, fp, bytes };
            return dir_inode(tref, Some((parent, name.clone())), generation);
        }
        EntryKind::File { attrs, content } => (Node::File(FileData::Clean(content)), attrs),
        EntryKind::Symlink { attrs, target } => (Node::Symlink(target), attrs),
        EntryKind::Special { attrs, special } => (Node::Special(special), attrs),
    };
    Inode {
        node,
        atime: attrs.mtime,
        ctime: attrs.mtime,
        attrs,
        parents: vec![parent],
        name: None,
        nlookup: AtomicU64::new(0),
        open: AtomicU32::new(0),
        generation,
    }
}

// ---- path-based helpers, for import, tests and tools ----

impl Workspace {
    /// Resolves a `/`-separated path relative to the root, without following symlinks.
    pub fn resolve(&self, path: &str) -> Result<Ino> {
        let mut st = self.state.write();
        let mut ino = Ino::ROOT;
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let name = Name::try_from(comp)?;
            if st.inode(ino)?.kind() != Kind::Dir {
                return Err(Error::NotADirectory(comp.to_string()));
            }
            ino = st.lookup(&self.shared, ino, &name)?;
        }
        Ok(ino)
    }

    /// Splits `path` into its parent directory's inode and its last name.
    pub fn parent_of(&self, path: &str) -> Result<(Ino, Name)> {
        let path = path.trim_end_matches('/');
        let (dir, last) = match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => ("", path),
        };
        let parent = self.resolve(dir)?;
        Ok((parent, Name::try_from(last)?))
    }

    /// The whole content of the file at `path`.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let ino = self.resolve(path)?;
        let size = self.getattr(ino)?.size;
        let mut out = Vec::with_capacity(size as usize);
        while (out.len() as u64) < size {
            let chunk = self.read(
                ino,
                out.len() as u64,
                (size - out.len() as u64).min(1 << 20) as u32,
            )?;
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Creates or replaces the file at `path` with `data` (mode 0644 when created).
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<Ino> {
        let (parent, name) = self.parent_of(path)?;
        let ino = match self.create(parent, &name, Kind::File, 0o644, 0, 0) {
            Ok(st) => st.ino,
            Err(Error::AlreadyExists(_)) => {
                let ino = self.resolve(path)?;
                self.setattr(
                    ino,
                    SetAttr {
                        size: Some(0),
                        ..Default::default()
                    },
                )?;
                ino
            }
            Err(e) => return Err(e),
        };
        self.write(ino, 0, data)?;
        Ok(ino)
    }

    /// Creates the directory at `path`.
    pub fn mkdir_path(&self, path: &str) -> Result<Ino> {
        let (parent, name) = self.parent_of(path)?;
        Ok(self.mkdir(parent, &name, 0o755, 0, 0)?.ino)
    }

    /// Lists every path below the root with its kind, in depth-first name order.
    pub fn walk(&self) -> Result<Vec<(String, Kind)>> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), Ino::ROOT)];
        while let Some((prefix, ino)) = stack.pop() {
            let mut children = self.readdir(ino)?;
            children.reverse();
            for e in children {
                let path = format!("{prefix}{}", e.name);
                if e.kind == Kind::Dir {
                    stack.push((format!("{path}/"), e.ino));
                }
                out.push((path, e.kind));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The workspace's state directory (own file copies live in `data/`).
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }
}
