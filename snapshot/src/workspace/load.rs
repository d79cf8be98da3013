//! Lazy loading of directories from the store, and what a checkout needs from it:
//! reusing the inodes of unchanged paths, orphaning and freeing the rest.

use super::*;

impl State {
    pub(super) fn load_if_dir(&mut self, shared: &Shared, ino: Ino) -> Result<()> {
        if self.inode(ino)?.kind() == Kind::Dir {
            self.ensure_loaded(shared, ino)?;
        }
        Ok(())
    }

    /// Loads a directory's node from the store, creating (or, after a checkout, reusing)
    /// inodes for its entries.
    pub(super) fn ensure_loaded(&mut self, shared: &Shared, ino: Ino) -> Result<()> {
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
                touched: Some(FxHashSet::default()),
                subdirs,
            },
            prev: None,
        };
        Ok(())
    }

    /// A directory from before a checkout, reached without walking from the root (a
    /// process's working directory): find its path in the new tree, which re-points it if
    /// the path is still a directory there; otherwise it becomes an empty, removed one.
    pub(super) fn revalidate(&mut self, shared: &Shared, ino: Ino) -> Result<()> {
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
    pub(super) fn reusable(&self, old: Ino, entry: &EntryKind) -> bool {
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

    pub(super) fn reuse(&mut self, old: Ino, parent: Ino, entry: EntryKind) {
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
    pub(super) fn orphan(&mut self, old: Ino, parent: Ino) {
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
    pub(super) fn free_tree(&mut self, ino: Ino) {
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
    pub(super) fn maybe_free(&mut self, ino: Ino) {
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

    pub(super) fn lookup(&mut self, shared: &Shared, parent: Ino, name: &Name) -> Result<Ino> {
        self.ensure_loaded(shared, parent)?;
        let ino = *self
            .entries(parent)?
            .get(name)
            .ok_or_else(|| Error::NoEntry(name.to_string()))?;
        self.load_if_dir(shared, ino)?;
        Ok(ino)
    }

    /// Every (directory, name) and inode the kernel may have cached: what an engine must
    /// invalidate when the tree under it becomes `new` (a checkout). O(entries of the
    /// directories the kernel holds). A directory that is a directory at the same path
    /// in `new` keeps its inode (reused by path when its parent loads again), so its
    /// entry stays valid and is not listed (its inode is): invalidating a dentry detaches
    /// every mount on it, and a container whose root filesystem is the workspace has
    /// /proc, /dev and /sys mounted on its directories.
    pub(super) fn known_entries(&self, shared: &Shared, new: &Hash) -> Invalidation {
        let mut inv = Invalidation::default();
        let load = |h: &Hash| shared.node(h).ok();
        let mut stack = vec![(Ino::ROOT, load(new))];
        inv.inodes.push(Ino::ROOT);
        while let Some((dir, new_dir)) = stack.pop() {
            let Some(entries) = self.inodes.get(&dir).and_then(|i| kernel_known(&i.node)) else {
                continue;
            };
            for (name, &child) in entries {
                let Some(i) = self.inodes.get(&child) else {
                    continue;
                };
                let new_child = match (&i.node, new_dir.as_ref().and_then(|d| d.get(name))) {
                    (Node::Dir { .. }, Some(EntryKind::Dir { node, .. })) => Some(node),
                    _ => None,
                };
                // An inode the kernel holds no lookup of has no dentry, so none below
                // it either (a dentry pins its parent's): the walk stops there, and
                // costs what the kernel caches, not what the workspace once loaded.
                if i.nlookup.load(Relaxed) == 0 {
                    continue;
                }
                if new_child.is_none() {
                    inv.entries.push((dir, name.clone()));
                }
                inv.inodes.push(child);
                if kernel_known(&i.node).is_some() {
                    stack.push((child, new_child.and_then(load)));
                }
            }
        }
        // Children before their parents: once a directory's dentry is invalidated, the
        // kernel can no longer find its children's dentries to invalidate them.
        inv.entries.reverse();
        inv
    }
}

/// The entries of a directory the kernel may have cached: its loaded ones, or, for one
/// not loaded since an earlier checkout, those from before it (`prev`; a directory that
/// stayed a directory kept its kernel entry, which a later checkout may have to drop).
fn kernel_known(node: &Node) -> Option<&BTreeMap<Name, Ino>> {
    match node {
        Node::Dir {
            state: DirState::Loaded { entries, .. },
            ..
        } => Some(entries),
        Node::Dir { prev, .. } => prev.as_ref(),
        _ => None,
    }
}
