//! Commits of the inode table: snapshot, save (the `head` kept at a clean stop) and
//! checkout. A commit encodes only dirty directories and hashes only written files;
//! a failed write restores every mark it made.

use parking_lot::RwLockWriteGuard;

use super::*;
use crate::commit::{self, Built, ChangeSource, Landed, Landing};

/// The inode table as a source of changes: it re-encodes dirty directories and hashes
/// written files; landing moves the workspace onto the new snapshot (or records the tree
/// as its `head`) and empties its journal in the same batch. The workspace lock is held
/// while the tree is built and the batch staged, and released across the write: changes
/// made meanwhile are marks on top of the tree being written (and survive its failure,
/// which restores the commit's marks only).
struct TableSource<'a> {
    ws: &'a Workspace,
    /// The workspace lock; `None` while the batch is written.
    st: Option<RwLockWriteGuard<'a, State>>,
    cleaned: Vec<Cleaned>,
    /// The journal marks the staged batch settles (given back if it fails).
    jdirty: FxHashSet<Ino>,
}

impl<'a> TableSource<'a> {
    fn new(ws: &'a Workspace, st: RwLockWriteGuard<'a, State>) -> TableSource<'a> {
        TableSource {
            ws,
            st: Some(st),
            cleaned: Vec::new(),
            jdirty: FxHashSet::default(),
        }
    }
}

/// The lock of a source, held outside its write.
fn held<'s>(st: &'s mut Option<RwLockWriteGuard<'_, State>>) -> &'s mut State {
    st.as_mut()
        .expect("the workspace lock is held outside the write")
}

impl ChangeSource for TableSource<'_> {
    fn build(&mut self, w: &mut ObjectWriter<'_>) -> Result<Built> {
        let st = held(&mut self.st);
        let mut changed = 0;
        let tree = st.commit_dir(self.ws, Ino::ROOT, w, &mut changed, &mut self.cleaned);
        // Results the commit did not use (files gone meanwhile) must not outlive it.
        st.prehashed.clear();
        Ok(Built {
            tree: tree?,
            changed_paths: changed,
        })
    }

    fn stage(&mut self, landed: &Landed, batch: &mut Batch) {
        let st = held(&mut self.st);
        let rec = match &landed.snapshot {
            Some(s) => WorkspaceRecord {
                base: Some(s.id),
                base_root: s.root,
                ..self.ws.make_record(st, None)
            },
            None => {
                let head = (landed.tree.fp != st.base_root).then_some(landed.tree);
                self.ws.make_record(st, head)
            }
        };
        batch.put(
            Cf::Workspaces,
            self.ws.id.key(),
            snapshot::encode_record(&rec),
        );
        st.stage_journal_clear(self.ws.id, batch);
        // What changes from here on is marked anew, for the journal over the new tree.
        self.jdirty = std::mem::take(&mut st.jdirty);
    }

    fn before_write(&mut self) {
        self.st = None;
    }

    fn after_write(&mut self) {
        self.st = Some(self.ws.state.write());
    }

    fn landed(&mut self, landed: &Landed) {
        let st = held(&mut self.st);
        if let Some(s) = &landed.snapshot {
            st.base = Some(s.id);
            st.base_root = s.root;
        }
        st.journal_landed();
        self.ws.remove_dead_files(st);
    }

    fn failed(&mut self) {
        let st = held(&mut self.st);
        st.prehashed.clear();
        st.uncommit(&self.cleaned);
        st.jdirty.extend(self.jdirty.drain());
    }
}

impl Workspace {
    /// Freezes the current content as a new child of the base snapshot; the workspace
    /// then stands on it. Cost: O(changed paths × depth + changed bytes).
    pub fn snapshot(
        &self,
        label: Option<String>,
        annotations: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Snapshot> {
        self.snapshot_with(crate::SnapshotRequest {
            label,
            annotations,
            ..Default::default()
        })
    }

    /// `snapshot` with every choice of the request (durability among them).
    pub fn snapshot_with(&self, req: crate::SnapshotRequest) -> Result<Snapshot> {
        self.check_writable()?;
        let _sync = self.sync_lock.lock();
        let _gc = self.shared.gc_lock.read();
        let start = Instant::now();
        let mut w = self.shared.store.writer();
        self.prehash(&mut w)?;
        let st = self.state.write();
        let parent = st.base;
        let mut source = TableSource::new(self, st);
        let landing = Landing::snapshot(parent, None, req, start);
        commit::land(&self.shared, &mut source, w, landing)?.into_snapshot()
    }

    /// Hashes the changed own copies without holding the lock, so that a snapshot of a
    /// large change does not stall the workspace; the commit then uses each result whose
    /// file did not change meanwhile, and hashes the others itself.
    pub(super) fn prehash(&self, w: &mut ObjectWriter<'_>) -> Result<()> {
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
        // Measured before anything moves: the root is the snapshot's, unloaded.
        let usage = match st.quota {
            Some(_) => Some(Usage {
                bytes: snap.bytes,
                inodes: self.shared.count_names(&snap.tree)?,
            }),
            None => None,
        };
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
        if let Some(u) = usage {
            st.usage = u;
        }
        let invalidation = st.known_entries(&self.shared, &snap.tree);
        st.generation += 1;
        let generation = st.generation;
        let tref = snap.tree_ref();
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
        let st = self.state.write();
        let w = self.shared.store.writer();
        let mut source = TableSource::new(self, st);
        commit::land(&self.shared, &mut source, w, Landing::Tree)?;
        Ok(())
    }
}

impl State {
    /// Own copies a commit would hash now: (inode, file id, writes), found by walking
    /// only dirty directories.
    pub(super) fn pending_files(&self) -> Vec<(Ino, u64, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![Ino::ROOT];
        while let Some(dir) = stack.pop() {
            if !self.needs_commit(dir) {
                continue;
            }
            for child in &self.children_to_commit(dir) {
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

    /// Encodes a directory, recursing only into dirty subdirectories and hashing only
    /// changed files. `cleaned` records what was marked clean (with a directory's base
    /// before), for `uncommit`.
    pub(super) fn commit_dir(
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
                state: DirState::Loaded { base, .. },
                ..
            } => (self.children_to_commit(ino), *base),
            _ => return Err(Error::NotADirectory(ino.to_string())),
        };
        // Children first: dirty subdirectories and written files.
        for child in &pending {
            if self.inode(*child)?.kind() == Kind::Dir {
                self.commit_dir(ws, *child, w, changed, cleaned)?;
            } else {
                self.commit_file(ws, *child, w, cleaned)?;
            }
        }
        // Then encode from borrowed entries: no copies of names or attributes.
        let over = match base {
            Some(h) => self.encode_over(ws, ino, &h, changed)?,
            None => None,
        };
        let enc = match over {
            Some(enc) => enc,
            None => {
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
            }
        };
        let tref = enc.store(w)?;
        if let Node::Dir {
            state:
                DirState::Loaded {
                    clean,
                    base,
                    touched,
                    ..
                },
            ..
        } = &mut self.inode_mut(ino)?.node
        {
            *clean = Some(tref);
            *touched = Some(FxHashSet::default());
            cleaned.push(Cleaned {
                ino,
                base: base.replace(tref.node),
            });
        }
        Ok(tref)
    }

    /// Encodes directory `ino`, paged and with the names of its stored form `base`,
    /// re-encoding only the pages that hold a touched child and taking every other
    /// page's reference from `base`'s index: a commit of a few changed entries costs the
    /// pages they are in, not the directory. Adds the changed paths to `changed`.
    /// `None` when what changed is not known, or `base` is one node (or does not match
    /// the entries): the caller encodes it whole.
    fn encode_over(
        &self,
        ws: &Workspace,
        ino: Ino,
        base: &Hash,
        changed: &mut u64,
    ) -> Result<Option<tree::Encoded>> {
        let i = self.inode(ino)?;
        let Node::Dir {
            state:
                DirState::Loaded {
                    entries,
                    touched: Some(touched),
                    ..
                },
            ..
        } = &i.node
        else {
            return Ok(None);
        };
        let store = &ws.shared.store;
        let Some(old) = tree::base_pages(store, base)? else {
            return Ok(None);
        };
        if old.iter().map(|p| p.count as usize).sum::<usize>() != entries.len() {
            return Ok(None);
        }
        let mut refs = Vec::with_capacity(old.len());
        let mut pages = Vec::new();
        let mut names = entries.iter();
        let mut part = Vec::new();
        let mut count = 0u64;
        for p in &old {
            part.clear();
            part.extend(names.by_ref().take(p.count as usize));
            let dirty = part.iter().any(|(_, c)| touched.contains(*c));
            if !dirty {
                refs.push(*p);
                continue;
            }
            let mut page_refs = Vec::with_capacity(part.len());
            for (name, child) in &part {
                page_refs.push((*name, self.entry_ref(**child)?));
            }
            let (page, bytes) = tree::encode_page(&page_refs);
            if page.hash != p.hash {
                count += tree::count_page_changes(store, &p.hash, &page.hash, &bytes)?;
                pages.push((page.hash, bytes));
            }
            refs.push(page);
        }
        let (root, tref) = tree::encode_index(&i.attrs, &refs);
        *changed += count;
        Ok(Some(tree::Encoded { root, tref, pages }))
    }

    /// The children of loaded directory `dir` that need a commit (`needs_commit`),
    /// sorted by inode: found among the touched ones when they are known, else among
    /// all.
    fn children_to_commit(&self, dir: Ino) -> Vec<Ino> {
        let Some(Node::Dir {
            state: DirState::Loaded {
                entries, touched, ..
            },
            ..
        }) = self.inodes.get(&dir).map(|i| &i.node)
        else {
            return Vec::new();
        };
        match touched {
            Some(t) if t.len() < entries.len() => {
                let mut out: Vec<Ino> = t
                    .iter()
                    .copied()
                    .filter(|c| {
                        self.needs_commit(*c)
                            && self.inodes.get(c).is_some_and(|i| i.parents.contains(&dir))
                    })
                    .collect();
                out.sort();
                out
            }
            _ => {
                let mut out: Vec<Ino> = entries
                    .values()
                    .copied()
                    .filter(|c| self.needs_commit(*c))
                    .collect();
                out.sort();
                out.dedup();
                out
            }
        }
    }

    /// True for a dirty directory or a file written since its last commit.
    pub(super) fn needs_commit(&self, ino: Ino) -> bool {
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
    pub(super) fn entry_ref(&self, ino: Ino) -> Result<EntryRef<'_>> {
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

    pub(super) fn commit_file(
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

    /// Undoes the clean marks of a commit that failed to write. A directory's base goes
    /// back too: the node the failed commit encoded was never stored.
    pub(super) fn uncommit(&mut self, cleaned: &[Cleaned]) {
        for c in cleaned {
            if let Some(i) = self.inodes.get_mut(&c.ino) {
                match &mut i.node {
                    Node::Dir {
                        state:
                            DirState::Loaded {
                                clean,
                                base,
                                touched,
                                ..
                            },
                        ..
                    } => {
                        *clean = None;
                        *base = c.base;
                        // What changed since that base is no longer known.
                        *touched = None;
                    }
                    Node::File(FileData::Owned { committed, .. }) => *committed = None,
                    _ => {}
                }
            }
        }
    }
}

/// An inode a commit marked clean, and a directory's base before it.
pub(super) struct Cleaned {
    ino: Ino,
    base: Option<Hash>,
}

/// An own copy hashed without the lock, valid while its `writes` count is unchanged.
pub(super) struct Prehashed {
    id: u64,
    writes: u64,
    content: Content,
    mtime: Nanos,
}
