//! The workspace side of the journal (`crate::journal`): sync writes the records of
//! what changed since the last sync; a workspace opened after a crash is rebuilt from
//! them.

use super::*;

impl Workspace {
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
}

impl State {
    /// Stages the deletion of every journal record (the batch commits or moves the
    /// workspace, leaving nothing uncommitted that a record would describe).
    pub(super) fn stage_journal_clear(&self, ws: WorkspaceId, batch: &mut Batch) {
        for ino in self.journaled.keys() {
            batch.delete(Cf::Journal, journal::key(ws, *ino));
        }
    }

    /// The batch from `stage_journal_clear` landed, with every change marked before it
    /// was staged.
    pub(super) fn journal_cleared(&mut self) {
        self.jdirty.clear();
        self.journal_landed();
    }

    /// The batch from `stage_journal_clear` landed; the marks made since it was staged
    /// (`jdirty`, taken by the stager) are changes over what it wrote, and stay.
    pub(super) fn journal_landed(&mut self) {
        self.journaled.clear();
        self.release_held();
    }

    /// Own copy `id` of freed inode `ino` is garbage, once no journal record names it.
    pub(super) fn drop_file(&mut self, ino: Ino, id: u64) {
        if self.journaled.contains_key(&ino) {
            self.held_files.push((ino, id));
        } else {
            self.dead_files.push(id);
        }
    }

    /// Moves the held own copies whose records are gone to the dead ones.
    pub(super) fn release_held(&mut self) {
        let journaled = &self.journaled;
        let (keep, free): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held_files)
            .into_iter()
            .partition(|(ino, _)| journaled.contains_key(ino));
        self.held_files = keep;
        self.dead_files.extend(free.into_iter().map(|(_, id)| id));
    }

    /// The journal record `ino` should have now; `None` when it should have none (it is
    /// committed, recorded by value in its directory, or gone).
    pub(super) fn journal_record(&self, ino: Ino) -> Result<Option<Vec<u8>>> {
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
    pub(super) fn recover(
        &mut self,
        data: &Path,
        records: &FxHashMap<Ino, journal::Record>,
    ) -> Result<u64> {
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
                    touched: None,
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
}

/// The record hash of a journal record written by an earlier process.
pub(super) const UNKNOWN_RECORD: Hash = Hash([0; 32]);
