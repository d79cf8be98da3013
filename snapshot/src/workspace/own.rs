//! Own copies: the real files under `workspaces/wN/data/` that hold a workspace's
//! written files, created by copy-up (outside the lock for large files) and handed to
//! engines as file descriptors; and reads of stored content.

use super::*;

impl Workspace {
    /// Makes sure `ino` has its own file (copy-up), returning it and whether it was
    /// copied now. With `empty`, the old content is not copied (O_TRUNC, truncate to 0).
    pub(super) fn own(&self, st: &mut State, ino: Ino, empty: bool) -> Result<(Arc<File>, bool)> {
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
        st.account_resize(ino, content.size);
        if committed.is_none() {
            st.touch(ino);
        }
        Ok((file, true))
    }

    /// Creates own-copy file `id`.
    pub(super) fn new_data_file(&self, id: u64) -> Result<File> {
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
    pub(super) fn copy_content(&self, f: &mut File, content: &Content, mtime: Nanos) -> Result<()> {
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
    pub(super) fn copy_up(&self, ino: Ino) -> Result<()> {
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

    pub(super) fn owned_file(&self, st: &State, ino: Ino) -> Result<Arc<File>> {
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
pub(super) fn read_content(
    shared: &Shared,
    content: &Content,
    offset: u64,
    len: u32,
) -> Result<Vec<u8>> {
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

pub(super) fn file_mtime(meta: &std::fs::Metadata) -> Nanos {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

pub(super) fn file_ctime(meta: &std::fs::Metadata) -> Nanos {
    use std::os::unix::fs::MetadataExt;
    meta.ctime() * 1_000_000_000 + meta.ctime_nsec()
}

pub(super) fn time_of(ns: Nanos) -> std::time::SystemTime {
    let epoch = std::time::UNIX_EPOCH;
    if ns >= 0 {
        epoch + std::time::Duration::from_nanos(ns as u64)
    } else {
        epoch - std::time::Duration::from_nanos(ns.unsigned_abs())
    }
}

pub(super) fn set_file_mtime(path: &Path, mtime: Nanos) -> Result<()> {
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
