//! The POSIX operations an engine calls: lookup, attributes, create, link, unlink,
//! rename, read, write, open files and extended attributes. Each takes the workspace lock
//! once (shared where it only reads loaded state) and applies the rules of the
//! operation; the table itself lives in `mod.rs`.

use super::*;

impl Workspace {
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

    /// Permission bits and group of `ino`, from the table alone (no stat of an own
    /// copy): what an engine checks on an open for writing.
    pub fn mode_and_group(&self, ino: Ino) -> Result<(u32, u32)> {
        let st = self.state.read();
        let a = &st.inode(ino)?.attrs;
        Ok((a.mode, a.gid))
    }

    /// `stat` under the shared lock; `None` when the own copy changed behind our back
    /// and the exclusive lock is needed to record it.
    pub(super) fn stat_shared(&self, st: &State, ino: Ino) -> Option<Result<Stat>> {
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
            st.check_resize(ino, size)?;
            let (file, _) = self.own(&mut st, ino, size == 0)?;
            let old = quota::file_size(st.inode(ino)?);
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
            st.account_resize(ino, old);
            let i = st.inode_mut(ino)?;
            i.attrs.mtime = t;
        }
        let i = st.inode_mut(ino)?;
        if let Some(mode) = set.mode {
            i.attrs.mode = mode & 0o7777;
        } else if set.kill_setid && !matches!(i.node, Node::Dir { .. }) {
            i.attrs.mode = killed_setid(i.attrs.mode, set.kill_sgid);
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
    pub(super) fn stat(&self, st: &mut State, ino: Ino) -> Result<Stat> {
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
    pub(super) fn create_inner(
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
        let size = quota::file_size(st.inode(ino)?);
        st.charge(size, 1)?;
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
        self.reserve(ino, offset + data.len() as u64)?;
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
}
