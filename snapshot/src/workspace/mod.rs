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
//! Modules by job: `types` (what engines see: stats, entries, records), `ops` (the
//! POSIX operations an engine calls), `load` (lazy loading, and inode reuse across a
//! checkout), `own` (own copies: copy-up, the real files handed to the kernel), `commit`
//! (snapshot, save, checkout), `durable` (the journal: sync and recovery), `paths`
//! (path-based helpers for import, tests and tools).
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
use crate::snapshot::{self, Snapshot};
use crate::store::{Batch, Cf, Durability, ObjectWriter};
use crate::tree::{self, Attrs, Content, EntryKind, EntryRef, Nanos, Special, TARGET_MAX, TreeRef};

mod commit;
mod durable;
mod load;
mod ops;
mod own;
mod paths;
mod quota;
mod types;

use commit::Prehashed;
use durable::UNKNOWN_RECORD;
use own::{file_ctime, file_mtime, read_content, set_file_mtime};
pub(crate) use types::killed_setid;
pub(crate) use types::now;
pub use types::{
    DirEntry, Invalidation, Kind, Quota, RenameMode, SetAttr, SetTime, Stat, Usage,
    WorkspaceRecord, XATTR_VALUE_MAX, XattrMode,
};

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
        /// The node it was loaded from (or last committed to), to count changed paths
        /// and reuse unchanged pages at commit.
        base: Option<Hash>,
        /// The children whose entries changed since `base`, while its names are those of
        /// `base` (`None`: unknown, or names changed): a commit re-encodes only the
        /// pages that hold one of them.
        touched: Option<FxHashSet<Ino>>,
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
                touched: None,
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
    /// The workspace's id (for errors).
    id: WorkspaceId,
    base: Option<SnapshotId>,
    base_root: Hash,
    props: serde_json::Value,
    /// Kept as read (see `WorkspaceRecord::lower`).
    lower: Option<SnapshotId>,
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
    /// Its limits (`quota.rs`); `None`: unlimited, and `usage` is not kept.
    quota: Option<Quota>,
    /// What it holds, while it has a quota.
    usage: Usage,
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
    /// It has a quota (read without the lock on every write an engine serves).
    limited: AtomicBool,
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
            id: rec.id,
            base: rec.base,
            base_root: rec.base_root,
            props: rec.props.clone(),
            lower: rec.lower,
            inodes: FxHashMap::default(),
            next_ino: 2,
            generation: 0,
            dead_files: Vec::new(),
            prehashed: FxHashMap::default(),
            jdirty: FxHashSet::default(),
            // Written before this process: their bytes are not known here.
            journaled: records.keys().map(|k| (*k, UNKNOWN_RECORD)).collect(),
            held_files: Vec::new(),
            quota: rec.quota.filter(|q| !q.is_unlimited()),
            usage: Usage::default(),
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
        st.remeasure(&shared)?;
        let limited = AtomicBool::new(st.quota.is_some());
        Ok(Workspace {
            shared,
            id: rec.id,
            dir,
            read_only: rec.read_only,
            next_file: AtomicU64::new(next_file),
            data_created: AtomicBool::new(false),
            sync_lock: parking_lot::Mutex::new(()),
            state: RwLock::new(st),
            limited,
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
            lower: st.lower,
            props: st.props.clone(),
            quota: st.quota,
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

    // ---- snapshots ----

    // ---- helpers ----
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
            // Its own attributes: its pages stay, its entry in the parent changes.
            self.mark_dirty(ino, false);
        } else if let Some(i) = self.inodes.get(&ino) {
            for p in i.parents.clone() {
                // Its parents record it (by value, or by inode once it is journaled).
                self.jdirty.insert(p);
                self.note_touched(p, ino);
                self.mark_dirty(p, false);
            }
        }
    }

    /// Marks directory `ino` and its ancestors dirty, not knowing which entries changed
    /// (a commit then encodes it whole).
    fn dirty_dir(&mut self, ino: Ino) {
        self.mark_dirty(ino, true);
    }

    /// Marks directory `ino` and its ancestors dirty; `entries_changed`: its set of
    /// entries changed in a way `touched` does not record (names added, removed, moved).
    /// Each ancestor records the child it is dirty through.
    fn mark_dirty(&mut self, mut ino: Ino, mut entries_changed: bool) {
        loop {
            let Some(i) = self.inodes.get_mut(&ino) else {
                return;
            };
            match &mut i.node {
                Node::Dir {
                    state: DirState::Loaded { clean, touched, .. },
                    ..
                } => {
                    if entries_changed {
                        *touched = None;
                    }
                    if clean.take().is_none() && ino != Ino::ROOT {
                        // Already dirty: by the invariant, so are its ancestors, and
                        // each already records the child it is dirty through.
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
                    self.note_touched(p, ino);
                    entries_changed = false;
                    ino = p;
                }
                None => return,
            }
        }
    }

    /// Directory `dir`'s entry for `child` changed (content, attributes, or a subtree).
    fn note_touched(&mut self, dir: Ino, child: Ino) {
        if let Some(Inode {
            node:
                Node::Dir {
                    state:
                        DirState::Loaded {
                            touched: Some(t), ..
                        },
                    ..
                },
            ..
        }) = self.inodes.get_mut(&dir)
        {
            t.insert(child);
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
        self.charge(0, 1)?;
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
        let size = self.inodes.get(&ino).map_or(0, quota::file_size);
        self.account(-(size as i64), -1);
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
        let old = quota::file_size(self.inode(ino)?);
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
        self.account_resize(ino, old);
        self.touch(ino);
        Ok(())
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
