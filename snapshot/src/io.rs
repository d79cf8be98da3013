//! Import of real directories into snapshots and export of snapshots to real
//! directories, preserving modes, owners, extended attributes (ACLs and file
//! capabilities among them), symlinks and mtimes. Both stream: memory is
//! bounded by one chunk per file and one directory node per level.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{FchownatFlags, Gid, Uid, fchownat};

use crate::commit::{self, Built, ChangeSource, Landing};
use crate::error::{Error, Result};
use crate::ids::SnapshotId;
use crate::name::Name;
use crate::repo::Repo;
use crate::snapshot::Snapshot;
use crate::store::{ObjectWriter, Store};
use crate::tree::{self, Attrs, DirNode, EntryKind, Special, TreeRef};

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let context = format!("{what} {}", path.display());
    move |e| Error::io(context, e)
}

/// The attributes of a host file as a snapshot stores them: permission bits, owner,
/// mtime and every readable extended attribute (see `xattrs_of`). `meta` is its
/// `symlink_metadata`.
pub fn attrs_of(path: &Path, meta: &fs::Metadata) -> Result<Attrs> {
    Ok(Attrs {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        xattrs: xattrs_of(path)?,
    })
}

/// A host symlink, named pipe, device or socket as a snapshot stores it (`meta` is its
/// `symlink_metadata`; it is neither a directory nor a regular file).
pub fn special_of(path: &Path, meta: &fs::Metadata) -> Result<EntryKind> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        use std::os::unix::ffi::OsStrExt;
        let target = fs::read_link(path).map_err(io_err("readlink", path))?;
        return Ok(EntryKind::Symlink {
            attrs: attrs_of(path, meta)?,
            target: target.as_os_str().as_bytes().to_vec(),
        });
    }
    let special = if ft.is_fifo() {
        Special::Fifo
    } else if ft.is_char_device() {
        Special::Char(meta.rdev())
    } else if ft.is_block_device() {
        Special::Block(meta.rdev())
    } else {
        Special::Socket
    };
    Ok(EntryKind::Special {
        attrs: attrs_of(path, meta)?,
        special,
    })
}

/// The extended attributes of `path` (not following a symlink), sorted by name: every
/// namespace the caller can read (`user.*`; `trusted.*` and `security.*` as root;
/// extended POSIX ACLs as `system.posix_acl_*`).
fn xattrs_of(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use std::os::unix::ffi::OsStrExt;
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("list xattrs of {}", path.display()), e)),
    };
    let mut out = Vec::new();
    for name in names {
        let value = match xattr::get(path, &name) {
            Ok(Some(v)) => v,
            // Removed meanwhile.
            Ok(None) => continue,
            Err(e) => {
                return Err(Error::io(
                    format!("read xattr {:?} of {}", name, path.display()),
                    e,
                ));
            }
        };
        if value.len() > crate::workspace::XATTR_VALUE_MAX {
            return Err(Error::InvalidArgument(format!(
                "xattr {:?} of {} has {} bytes",
                name,
                path.display(),
                value.len()
            )));
        }
        out.push((name.as_bytes().to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// Sets the stored extended attributes on an exported `path`. As with owners, a
/// privileged namespace (`trusted.*`, `security.*`) is skipped where the caller lacks
/// the privilege; any other failure is an error, never a silent loss.
fn set_xattrs(path: &Path, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    for (name, value) in xattrs {
        let os = std::ffi::OsStr::from_bytes(name);
        match xattr::set(path, os, value) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EPERM)
                    && (name.starts_with(b"trusted.") || name.starts_with(b"security.")) => {}
            Err(e) => {
                return Err(Error::io(
                    format!("set xattr {:?} on {}", os, path.display()),
                    e,
                ));
            }
        }
    }
    Ok(())
}

impl Repo {
    /// Imports the directory `path` as a new root snapshot.
    pub fn import(&self, path: &Path, label: Option<String>) -> Result<Snapshot> {
        let meta = fs::metadata(path).map_err(io_err("import", path))?;
        if !meta.is_dir() {
            return Err(Error::NotADirectory(path.display().to_string()));
        }
        let _gc = self.shared.gc_lock.read();
        let landing = Landing::Snapshot {
            parent: None,
            merged: None,
            label,
            annotations: Default::default(),
            start: Instant::now(),
            durability: crate::store::Durability::Sync,
        };
        let mut source = Import { path, meta };
        let w = self.shared.store.writer();
        commit::land(&self.shared, &mut source, w, landing)?.into_snapshot()
    }

    /// Writes snapshot `id` into `target`, which must be missing or an empty directory.
    pub fn export(&self, id: SnapshotId, target: &Path) -> Result<()> {
        let snap = self.snapshot(id)?;
        match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => {
                if fs::read_dir(target)
                    .map_err(io_err("read", target))?
                    .next()
                    .is_some()
                {
                    return Err(Error::PathNotAllowed {
                        path: target.to_path_buf(),
                        why: "export target is not empty".into(),
                    });
                }
            }
            Ok(_) => {
                return Err(Error::PathNotAllowed {
                    path: target.to_path_buf(),
                    why: "export target exists and is not a directory".into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs::create_dir(target) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::PathNotAllowed {
                        path: target.to_path_buf(),
                        why: "its parent directory does not exist".into(),
                    });
                }
                Err(e) => return Err(Error::io(format!("create {}", target.display()), e)),
            },
            Err(e) => return Err(Error::io(format!("stat {}", target.display()), e)),
        }
        let node = DirNode::load(self.store(), &snap.tree)?;
        export_dir(self.store(), &node, target)
    }
}

/// What `Repo::export_stubs` wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StubStats {
    /// Paths written (files, directories, symlinks, specials; not the root).
    pub paths: u64,
    /// Regular files whose bytes live in the materialized-file cache.
    pub stubs: u64,
    /// Bytes of the regular files written (stubs and inlined).
    pub bytes: u64,
    /// Regular files written with their bytes (at most `inline_max`).
    pub inlined: u64,
}

impl Repo {
    /// The materialized-file cache's directory: every file of a snapshot that
    /// `export_stubs` or an engine needed, as `<2 hex>/<hash>`, read-only.
    pub fn file_cache_dir(&self) -> PathBuf {
        self.dir().join("cache")
    }

    /// Writes snapshot `id` into `target` (missing or empty) as `export` does, except
    /// that each regular file larger than `inline_max` is a sparse file of its size with
    /// its attributes, whose bytes are put in the materialized-file cache: `tag(stub,
    /// cache_file)` then marks the stub (the overlay engine names the cache file in
    /// its data-only layer). With `target` `None` only the cache is filled with those
    /// files (and every cached file this process had not checked yet is verified
    /// against its hash).
    pub fn export_stubs(
        &self,
        id: SnapshotId,
        target: Option<&Path>,
        inline_max: u64,
        tag: &mut dyn FnMut(&Path, &Path) -> Result<()>,
    ) -> Result<StubStats> {
        let snap = self.snapshot(id)?;
        if let Some(t) = target {
            fs::create_dir_all(t).map_err(io_err("create", t))?;
        }
        let node = DirNode::load(self.store(), &snap.tree)?;
        let mut stats = StubStats::default();
        self.stub_dir(&node, target, inline_max, tag, &mut stats)?;
        Ok(stats)
    }

    fn stub_dir(
        &self,
        node: &DirNode,
        dir: Option<&Path>,
        inline_max: u64,
        tag: &mut dyn FnMut(&Path, &Path) -> Result<()>,
        stats: &mut StubStats,
    ) -> Result<()> {
        for (name, kind) in &node.entries {
            // As in `export_dir`: names stay inside `dir`, every entry is created new.
            let p = dir.map(|d| d.join(name.as_os_str()));
            stats.paths += 1;
            match kind {
                EntryKind::Dir { node: h, .. } => {
                    if let Some(p) = &p {
                        fs::create_dir(p).map_err(io_err("create", p))?;
                    }
                    let child = DirNode::load(self.store(), h)?;
                    self.stub_dir(&child, p.as_deref(), inline_max, tag, stats)?;
                }
                EntryKind::File { attrs, content } => {
                    let cached = (content.size > inline_max)
                        .then(|| self.shared.materialize(content))
                        .transpose()?;
                    if cached.is_some() {
                        stats.stubs += 1;
                        stats.bytes += content.size;
                    }
                    let Some(p) = p else { continue };
                    if cached.is_some() {
                        create_new(&p)?
                            .set_len(content.size)
                            .map_err(io_err("truncate", &p))?;
                    } else {
                        if content.size > 0 {
                            stats.inlined += 1;
                            stats.bytes += content.size;
                        }
                        write_file(self.store(), &p, content)?;
                    }
                    set_attrs(&p, attrs, false)?;
                    if let Some(c) = cached {
                        tag(&p, &c)?;
                    }
                }
                EntryKind::Symlink { .. } | EntryKind::Special { .. } => {
                    if let Some(p) = &p {
                        export_other(p, kind)?;
                    }
                }
            }
        }
        if let Some(d) = dir {
            set_attrs(d, &node.attrs, false)?;
        }
        Ok(())
    }
}

/// A real directory as a source of changes: every path in it is new.
struct Import<'a> {
    path: &'a Path,
    meta: fs::Metadata,
}

impl ChangeSource for Import<'_> {
    fn build(&mut self, w: &mut ObjectWriter<'_>) -> Result<Built> {
        let mut paths = 0;
        let tree = import_dir(w, self.path, &self.meta, &mut paths)?;
        Ok(Built {
            tree,
            changed_paths: paths,
        })
    }
}

fn import_dir(
    w: &mut ObjectWriter<'_>,
    path: &Path,
    meta: &fs::Metadata,
    paths: &mut u64,
) -> Result<TreeRef> {
    let mut children: Vec<(Name, fs::DirEntry)> = Vec::new();
    for entry in fs::read_dir(path).map_err(io_err("read", path))? {
        let entry = entry.map_err(io_err("read", path))?;
        let name = Name::try_from(entry.file_name().as_os_str())?;
        children.push((name, entry));
    }
    children.sort_by(|a, b| a.0.cmp(&b.0));
    let mut node = DirNode {
        attrs: attrs_of(path, meta)?,
        entries: Vec::with_capacity(children.len()),
    };
    for (name, entry) in children {
        let p = entry.path();
        let m = fs::symlink_metadata(&p).map_err(io_err("stat", &p))?;
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            import_dir(w, &p, &m, paths)?.entry()
        } else if ft.is_file() {
            let f = fs::File::open(&p).map_err(io_err("open", &p))?;
            let content = tree::store_file(w, std::io::BufReader::with_capacity(256 << 10, f))?;
            EntryKind::File {
                attrs: attrs_of(&p, &m)?,
                content,
            }
        } else {
            special_of(&p, &m)?
        };
        *paths += 1;
        node.entries.push((name, kind));
    }
    node.store(w)
}

pub(crate) fn export_dir(store: &Store, node: &DirNode, dir: &Path) -> Result<()> {
    for (name, kind) in &node.entries {
        // `Name` excludes '/', '.' and '..', so the path stays inside `dir`; every entry
        // is created new, so nothing already there (a symlink) is ever followed.
        let p = dir.join(name.as_os_str());
        match kind {
            EntryKind::Dir { node: h, .. } => {
                fs::create_dir(&p).map_err(io_err("create", &p))?;
                let child = DirNode::load(store, h)?;
                export_dir(store, &child, &p)?;
            }
            EntryKind::File { attrs, content } => {
                write_file(store, &p, content)?;
                set_attrs(&p, attrs, false)?;
            }
            EntryKind::Symlink { .. } | EntryKind::Special { .. } => export_other(&p, kind)?,
        }
    }
    // Directory attributes last: a read-only mode would block creating its children,
    // and creating them would move its mtime.
    set_attrs(dir, &node.attrs, false)
}

/// A new file at `p` (never one already there).
fn create_new(p: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)
        .map_err(io_err("create", p))
}

/// A new file at `p` holding `content`.
pub(crate) fn write_file(store: &Store, p: &Path, content: &tree::Content) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(256 << 10, create_new(p)?);
    tree::write_content(store, content, &mut out)?;
    out.into_inner()
        .map_err(|e| Error::io(format!("write {}", p.display()), e.into_error()))?;
    Ok(())
}

/// Creates a symlink, named pipe, device or socket at `p`.
pub(crate) fn export_other(p: &Path, kind: &EntryKind) -> Result<()> {
    match kind {
        EntryKind::Symlink { attrs, target } => {
            use std::os::unix::ffi::OsStrExt;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), p)
                .map_err(io_err("symlink", p))?;
            set_attrs(p, attrs, true)?;
        }
        EntryKind::Special { attrs, special } => {
            use nix::sys::stat::{Mode, SFlag, mknod};
            let kind = match special {
                Special::Fifo => SFlag::S_IFIFO,
                Special::Char(_) => SFlag::S_IFCHR,
                Special::Block(_) => SFlag::S_IFBLK,
                Special::Socket => SFlag::S_IFSOCK,
            };
            mknod(p, kind, Mode::from_bits_truncate(0o600), special.rdev())
                .map_err(|e| Error::io(format!("mknod {}", p.display()), e.into()))?;
            set_attrs(p, attrs, false)?;
        }
        EntryKind::Dir { .. } | EntryKind::File { .. } => {
            unreachable!("export_other is for symlinks and specials")
        }
    }
    Ok(())
}

pub(crate) fn set_attrs(p: &Path, a: &Attrs, symlink: bool) -> Result<()> {
    let nofollow = if symlink {
        FchownatFlags::AT_SYMLINK_NOFOLLOW
    } else {
        FchownatFlags::empty()
    };
    // Owners are restored where permitted (as root); elsewhere files belong to the caller.
    match fchownat(
        nix::fcntl::AT_FDCWD,
        p,
        Some(Uid::from_raw(a.uid)),
        Some(Gid::from_raw(a.gid)),
        nofollow,
    ) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(e) => return Err(Error::io(format!("chown {}", p.display()), e.into())),
    }
    if !symlink {
        fs::set_permissions(p, fs::Permissions::from_mode(a.mode)).map_err(io_err("chmod", p))?;
    }
    // After chown (which clears `security.capability`) and chmod (an access ACL then
    // sets the same bits again), before the times.
    set_xattrs(p, &a.xattrs)?;
    let ts = TimeSpec::new(
        a.mtime.div_euclid(1_000_000_000),
        a.mtime.rem_euclid(1_000_000_000),
    );
    let flag = if symlink {
        UtimensatFlags::NoFollowSymlink
    } else {
        UtimensatFlags::FollowSymlink
    };
    utimensat(nix::fcntl::AT_FDCWD, p, &ts, &ts, flag)
        .map_err(|e| Error::io(format!("utimes {}", p.display()), e.into()))
}
