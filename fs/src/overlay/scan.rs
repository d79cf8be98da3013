//! Reading an overlay upperdir as an edit list over its lower snapshot: every entry in
//! the upper is a change (whiteouts delete, opaque directories replace, other
//! directories merge), so a scan costs O(entries in the upper), never O(tree).
//!
//! A scan also compares each entry's stat with the previous scan's (`Prev`): an entry
//! whose stat did not move (every write, chmod, chown, xattr change, link or rename moves
//! a ctime) keeps the edit it had, without reading its attributes again, and only the
//! others make `changes`, an edit list over the snapshot the previous scan committed.
//! That list is exact when every change is absolute or merges (a file, a stored entry, a
//! whiteout, a merged directory) and nothing the previous scan saw is gone; otherwise
//! (an opaque or moved directory changed, an entry vanished) the commit takes the whole
//! list over the lower layer, as without a previous scan.

use std::fs::{self, Metadata};
use std::hash::{Hash as _, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use helios_snapshot::tree::{Attrs, Content, EntryKind};
use helios_snapshot::{Edit, Edits};

use crate::{Error, Result};

/// What identifies a file's content between two scans: a write, truncate or any other
/// change moves its ctime.
pub(crate) type StatKey = (u64, u64, i64, i64, i64, i64);

fn stat_key(m: &Metadata) -> StatKey {
    (
        m.ino(),
        m.size(),
        m.ctime(),
        m.ctime_nsec(),
        m.mtime(),
        m.mtime_nsec(),
    )
}

/// Contents stored by earlier snapshots, by upper path, with the stat they were read at.
pub(crate) type Known = std::collections::HashMap<String, (StatKey, Content)>;

/// An upper entry as a scan saw it: its stat, its edit, and for a directory, where it
/// merges with the lower layer.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    key: StatKey,
    /// Its edit (a file the commit read becomes `Edit::Entry` once stored).
    pub edit: Edit,
    lower: Option<String>,
}

/// Every entry of the upper as the previous scan saw it, by path (`""`: the upper).
pub(crate) type Prev = rustc_hash::FxHashMap<String, Seen>;

/// How an entry compares with the previous scan.
#[derive(Clone, Copy, PartialEq)]
enum Prior {
    /// Not seen before.
    New,
    /// Seen, and its stat moved since.
    Moved,
    /// Seen, with the same stat: its edit is the one seen.
    Same,
}

/// What a scan found.
pub(crate) struct Scan {
    /// Regular files whose content the commit reads (not in `Known` as they are now),
    /// with their stat at the scan.
    pub fresh: Vec<(String, StatKey)>,
    /// The changes over the lower layer, when asked for and `changes` is `None`.
    pub edits: Edits,
    /// The changes since `prev` (over the snapshot it committed), when they are exact
    /// (see the module documentation); `None` otherwise.
    pub changes: Option<Edits>,
    /// Every entry as this scan saw it, for the next one.
    pub seen: Prev,
    /// A fingerprint of the upper's metadata (names, inode numbers, ctimes): equal
    /// fingerprints mean nothing was written in between (every write, chmod, link,
    /// rename or delete moves a ctime).
    pub sig: u64,
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    super::io(format!("{what} {}", path.display()))
}

/// True for an overlay whiteout: a character device 0/0.
/// `None` for an entry removed or renamed since it was listed (the agent may write while
/// its workspace is snapshotted; a later snapshot sees where it went).
fn gone_is_none<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::Core(helios_snapshot::Error::Io { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn is_whiteout(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// The attributes a snapshot stores for an upper entry: the overlay's own xattrs
/// (`trusted.overlay.*`, `user.overlay.*`) are the engine's bookkeeping, not the file's.
fn attrs(path: &Path, m: &Metadata) -> Result<Attrs> {
    let mut a = helios_snapshot::host_attrs(path, m)?;
    strip_overlay_xattrs(&mut a);
    Ok(a)
}

fn strip_overlay_xattrs(a: &mut Attrs) {
    a.xattrs
        .retain(|(n, _)| !n.starts_with(b"trusted.overlay.") && !n.starts_with(b"user.overlay."));
}

fn sig_of(h: &mut impl Hasher, rel: &str, m: &Metadata) {
    rel.hash(h);
    (m.ino(), m.mode(), m.size(), m.ctime(), m.ctime_nsec()).hash(h);
    (m.mtime(), m.mtime_nsec()).hash(h);
}

/// Scans `upper`; with `edits`, builds the edit lists too (otherwise only the
/// fingerprint, which needs no xattr reads), reusing what `prev` saw of entries whose
/// stat did not move.
pub(crate) fn scan(upper: &Path, edits: bool, known: &Known, prev: &Prev) -> Result<Scan> {
    let mut out = Edits::new();
    let mut fresh = Vec::new();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let m = fs::symlink_metadata(upper).map_err(io("stat", upper))?;
    sig_of(&mut h, "", &m);
    let mut w = Walk {
        changes: Edits::new(),
        exact: !prev.is_empty(),
        found: 0,
        prev,
        seen: Prev::default(),
        known,
        fresh: &mut fresh,
        edits,
    };
    if edits {
        let key = stat_key(&m);
        let (prior, same) = w.prior("", &key);
        let edit = match same {
            Some(s) => s.edit,
            None => Edit::Dir {
                attrs: attrs(upper, &m)?,
                opaque: false,
            },
        };
        w.note("", prior, key, edit, Some(String::new()))?;
    }
    walk(upper, "", Some(""), &mut w, &mut h)?;
    let exact = w.exact && w.found == prev.len();
    let (changes, seen) = (w.changes, w.seen);
    // The whole list only where it is used: without exact changes.
    if edits && !exact {
        for (rel, s) in &seen {
            out.set(rel, s.edit.clone())?;
        }
    }
    Ok(Scan {
        fresh,
        edits: out,
        changes: exact.then_some(changes),
        seen,
        sig: h.finish(),
    })
}

/// The edit for a directory of the upper, from its raw attributes (overlay xattrs
/// included), and where it merges with the lower layer: its own path below its parent's
/// lower path, or where an overlay `redirect` says it was moved from (absolute from the
/// lower root, or a name in the parent's lower directory); `None` for an opaque one.
fn dir_edit(mut attrs: Attrs, parent_lower: Option<&str>, name: &str) -> (Option<String>, Edit) {
    let xattr = |n: &[u8]| {
        attrs
            .xattrs
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let opaque = xattr(b"trusted.overlay.opaque").is_some_and(|v| v == b"y");
    let redirect = xattr(b"trusted.overlay.redirect");
    strip_overlay_xattrs(&mut attrs);
    if opaque {
        return (
            None,
            Edit::Dir {
                attrs,
                opaque: true,
            },
        );
    }
    let join = |n: &str| {
        parent_lower.map(|p| {
            if p.is_empty() {
                n.to_string()
            } else {
                format!("{p}/{n}")
            }
        })
    };
    match redirect {
        Some(r) => {
            let r = String::from_utf8_lossy(&r);
            let from = match r.strip_prefix('/') {
                Some(abs) => Some(abs.trim_end_matches('/').to_string()),
                None => join(&r),
            };
            match from {
                Some(from) => (Some(from.clone()), Edit::MovedDir { attrs, from }),
                None => (
                    None,
                    Edit::Dir {
                        attrs,
                        opaque: true,
                    },
                ),
            }
        }
        None => (
            join(name),
            Edit::Dir {
                attrs,
                opaque: false,
            },
        ),
    }
}

struct Walk<'a> {
    /// The edits of entries new or changed since `prev`.
    changes: Edits,
    /// `changes` is exact so far.
    exact: bool,
    /// Entries of `prev` found again.
    found: usize,
    prev: &'a Prev,
    seen: Prev,
    known: &'a Known,
    fresh: &'a mut Vec<(String, StatKey)>,
    edits: bool,
}

impl Walk<'_> {
    /// How `rel` compares with the previous scan, and what that scan saw there if its
    /// stat did not move.
    fn prior(&mut self, rel: &str, key: &StatKey) -> (Prior, Option<Seen>) {
        match self.prev.get(rel) {
            Some(s) => {
                self.found += 1;
                if s.key == *key {
                    (Prior::Same, Some(s.clone()))
                } else {
                    (Prior::Moved, None)
                }
            }
            None => (Prior::New, None),
        }
    }

    /// Records what the scan saw at `rel`, and adds it to `changes` unless it is as the
    /// previous scan saw it (an opaque or moved directory changed makes `changes`
    /// inexact).
    fn note(
        &mut self,
        rel: &str,
        prior: Prior,
        key: StatKey,
        edit: Edit,
        lower: Option<String>,
    ) -> Result<()> {
        if prior != Prior::Same && self.exact {
            match &edit {
                Edit::Dir { opaque: true, .. } | Edit::MovedDir { .. } => self.exact = false,
                e => self.changes.set(rel, e.clone())?,
            }
        }
        self.seen.insert(rel.to_string(), Seen { key, edit, lower });
        Ok(())
    }
}

fn walk(
    dir: &Path,
    rel: &str,
    lower: Option<&str>,
    w: &mut Walk<'_>,
    h: &mut impl Hasher,
) -> Result<()> {
    let edits = w.edits;
    // Entries are stat'ed through the directory's descriptor (`DirEntry::metadata`),
    // not by path: a deep upper would otherwise pay a lookup of every component.
    let mut names: Vec<_> = match fs::read_dir(dir).and_then(|d| {
        d.map(|e| e.map(|e| (e.file_name(), e)))
            .collect::<std::io::Result<_>>()
    }) {
        Ok(names) => names,
        // Removed or renamed meanwhile (the agent may write during a snapshot).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io("read", dir)(e)),
    };
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, entry) in names {
        let path = dir.join(&name);
        let n = String::from_utf8_lossy(name.as_bytes());
        let mut child = String::with_capacity(rel.len() + 1 + n.len());
        if !rel.is_empty() {
            child.push_str(rel);
            child.push('/');
        }
        child.push_str(&n);
        let rel = child;
        if edits && std::str::from_utf8(name.as_bytes()).is_err() {
            return Err(Error::Unsupported(format!(
                "{}: names that are not UTF-8 are not supported by the overlay engine yet",
                path.display()
            )));
        }
        let m = match entry.metadata() {
            Ok(m) => m,
            // Deleted meanwhile: a later snapshot sees the whiteout.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("stat", &path)(e)),
        };
        sig_of(h, &rel, &m);
        let ft = m.file_type();
        if ft.is_dir() {
            // The sig-only scan needs no lower paths (nor xattr reads).
            let mut child_lower = None;
            if edits {
                let key = stat_key(&m);
                let (prior, same) = w.prior(&rel, &key);
                let (lower_path, edit) = match same {
                    Some(s) => (s.lower, s.edit),
                    None => {
                        let Some(raw) = gone_is_none(
                            helios_snapshot::host_attrs(&path, &m).map_err(Error::from),
                        )?
                        else {
                            continue;
                        };
                        dir_edit(raw, lower, &name.to_string_lossy())
                    }
                };
                w.note(&rel, prior, key, edit, lower_path.clone())?;
                child_lower = lower_path;
            }
            walk(&path, &rel, child_lower.as_deref(), w, h)?;
            continue;
        }
        if !edits {
            continue;
        }
        let key = stat_key(&m);
        let (prior, same) = w.prior(&rel, &key);
        if let Some(s) = same {
            w.note(&rel, prior, key, s.edit.clone(), None)?;
            continue;
        }
        let edit = if is_whiteout(&m) {
            Edit::Delete
        } else if ft.is_file() {
            let Some(attrs) = gone_is_none(attrs(&path, &m))? else {
                continue;
            };
            match w.known.get(&rel) {
                Some((k, content)) if *k == key => Edit::Entry(EntryKind::File {
                    attrs,
                    content: *content,
                }),
                _ => {
                    w.fresh.push((rel.clone(), key));
                    Edit::File {
                        attrs,
                        source: path.clone(),
                    }
                }
            }
        } else {
            let Some(mut kind) =
                gone_is_none(helios_snapshot::host_special(&path, &m).map_err(Error::from))?
            else {
                continue;
            };
            if let EntryKind::Symlink { attrs, .. } | EntryKind::Special { attrs, .. } = &mut kind {
                strip_overlay_xattrs(attrs);
            }
            Edit::Entry(kind)
        };
        w.note(&rel, prior, key, edit, None)?;
    }
    Ok(())
}
