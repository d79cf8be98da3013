//! A snapshot written out as its difference from another: the entries of `id` that
//! are not exactly those of `base` (contents, attributes and mtimes alike), and a
//! marker for each entry of `base` that `id` no longer has. Stacked over `base`
//! written out whole, it reads as `id` (the overlay engine's delta lower layers).
//! Pruned by equal directory nodes, it costs O(differences × depth), not O(tree).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::ids::SnapshotId;
use crate::io::{export_dir, export_other, set_attrs, write_file};
use crate::repo::Repo;
use crate::store::Store;
use crate::tree::{Attrs, DirNode, EntryKind, Merged, merge_entries};

/// How large a delta may get before `export_delta` declines to write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaLimits {
    /// Paths written (entries and deletion markers).
    pub paths: u64,
    /// Bytes of regular files written.
    pub bytes: u64,
}

/// What a delta holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Paths written, deletion markers included (not the root).
    pub paths: u64,
    /// Deletion markers among them.
    pub deleted: u64,
    /// Bytes of the regular files written.
    pub bytes: u64,
}

/// One step of writing a delta, in the order they run.
enum Step {
    /// A directory on a changed path; its attributes are set by a later `Attrs`.
    Dir(PathBuf),
    /// A directory's attributes, after its children (they move its mtime).
    Attrs(PathBuf, Attrs),
    /// A non-directory entry of `id`.
    Put(PathBuf, EntryKind),
    /// A directory of `id` where `base` has none: written whole.
    Tree(PathBuf, Hash),
    /// An entry of `base` that `id` does not have.
    Gone(PathBuf),
}

struct Plan<'a> {
    store: &'a Store,
    limits: DeltaLimits,
    stats: DeltaStats,
    steps: Vec<Step>,
}

impl Plan<'_> {
    /// Counts one path of `bytes`; false once over the limits.
    fn take(&mut self, bytes: u64) -> bool {
        self.stats.paths += 1;
        self.stats.bytes += bytes;
        self.stats.paths <= self.limits.paths && self.stats.bytes <= self.limits.bytes
    }

    /// Counts every path below directory node `node`; false once over the limits.
    fn take_tree(&mut self, node: &Hash) -> Result<bool> {
        let d = DirNode::load(self.store, node)?;
        for (_, k) in &d.entries {
            if !self.take(file_bytes(k)) {
                return Ok(false);
            }
            if let EntryKind::Dir { node, .. } = k
                && !self.take_tree(node)?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Plans directory `b` of `id` over directory `a` of `base` at `rel`; false once
    /// over the limits.
    fn dirs(&mut self, rel: &Path, a: &DirNode, b: &DirNode) -> Result<bool> {
        for step in merge_entries(&a.entries, &b.entries) {
            let ok = match step {
                Merged::Left(name, _) => {
                    self.stats.deleted += 1;
                    self.steps.push(Step::Gone(rel.join(name.as_os_str())));
                    self.take(0)
                }
                Merged::Right(name, kb) => self.put(rel.join(name.as_os_str()), kb)?,
                Merged::Both(name, ka, kb) => {
                    let p = rel.join(name.as_os_str());
                    match (ka, kb) {
                        (EntryKind::Dir { node: ha, .. }, EntryKind::Dir { node: hb, .. }) => {
                            if ha == hb {
                                true
                            } else {
                                let da = DirNode::load(self.store, ha)?;
                                let db = DirNode::load(self.store, hb)?;
                                self.steps.push(Step::Dir(p.clone()));
                                let ok = self.take(0) && self.dirs(&p, &da, &db)?;
                                self.steps.push(Step::Attrs(p, db.attrs));
                                ok
                            }
                        }
                        // A directory in `id` over a non-directory of `base` hides it;
                        // a non-directory over a directory hides the directory.
                        _ if ka == kb => true,
                        _ => self.put(p, kb)?,
                    }
                }
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Plans entry `k` of `id` at `p`, new or replacing what `base` has there.
    fn put(&mut self, p: PathBuf, k: &EntryKind) -> Result<bool> {
        if let EntryKind::Dir { node, .. } = k {
            let ok = self.take(0) && self.take_tree(node)?;
            self.steps.push(Step::Tree(p, *node));
            return Ok(ok);
        }
        let ok = self.take(file_bytes(k));
        self.steps.push(Step::Put(p, k.clone()));
        Ok(ok)
    }
}

fn file_bytes(k: &EntryKind) -> u64 {
    match k {
        EntryKind::File { content, .. } => content.size,
        _ => 0,
    }
}

impl Repo {
    /// Writes into `target` (which must not exist) snapshot `id` as its difference
    /// from snapshot `base`: every entry of `id` that is not exactly `base`'s (regular
    /// files with their bytes), the directories on the paths to them with `id`'s
    /// attributes, and for each entry of `base` missing from `id` whatever
    /// `deleted(path)` makes of it (the overlay engine: a whiteout). `Ok(None)`, with
    /// nothing left in `target`, when the delta would exceed `limits`.
    pub fn export_delta(
        &self,
        base: SnapshotId,
        id: SnapshotId,
        target: &Path,
        limits: DeltaLimits,
        deleted: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<Option<DeltaStats>> {
        let (sa, sb) = (self.snapshot(base)?, self.snapshot(id)?);
        let store = self.store();
        let nb = DirNode::load(store, &sb.tree)?;
        let mut plan = Plan {
            store,
            limits,
            stats: DeltaStats::default(),
            steps: Vec::new(),
        };
        if sa.tree != sb.tree {
            let na = DirNode::load(store, &sa.tree)?;
            if !plan.dirs(Path::new(""), &na, &nb)? {
                return Ok(None);
            }
        }
        fs::create_dir(target).map_err(|e| Error::io(format!("create {}", target.display()), e))?;
        let written = (|| -> Result<()> {
            for step in &plan.steps {
                match step {
                    Step::Dir(rel) => {
                        let p = target.join(rel);
                        fs::create_dir(&p)
                            .map_err(|e| Error::io(format!("create {}", p.display()), e))?;
                    }
                    Step::Attrs(rel, attrs) => set_attrs(&target.join(rel), attrs, false)?,
                    Step::Put(rel, kind) => {
                        let p = target.join(rel);
                        match kind {
                            EntryKind::File { attrs, content } => {
                                write_file(store, &p, content)?;
                                set_attrs(&p, attrs, false)?;
                            }
                            _ => export_other(&p, kind)?,
                        }
                    }
                    Step::Tree(rel, node) => {
                        let p = target.join(rel);
                        fs::create_dir(&p)
                            .map_err(|e| Error::io(format!("create {}", p.display()), e))?;
                        export_dir(store, &DirNode::load(store, node)?, &p)?;
                    }
                    Step::Gone(rel) => deleted(&target.join(rel))?,
                }
            }
            set_attrs(target, &nb.attrs, false)
        })();
        match written {
            Ok(()) => Ok(Some(plan.stats)),
            Err(e) => {
                let _ = fs::remove_dir_all(target);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn repo() -> (tempfile::TempDir, Repo) {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::open(&dir.path().join("state")).expect("open");
        (dir, repo)
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in walk(root) {
            let rel = e.strip_prefix(root).expect("inside").display().to_string();
            let m = fs::symlink_metadata(&e).expect("stat");
            out.push(format!("{rel} {:o}", m.permissions().mode()));
        }
        out.sort();
        out
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(p).expect("read").flatten() {
            let path = e.path();
            if e.file_type().expect("type").is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
        out
    }

    #[test]
    fn a_delta_holds_exactly_what_changed() {
        let (dir, repo) = repo();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("a/deep")).expect("mkdir");
        fs::create_dir_all(src.join("same/x")).expect("mkdir");
        fs::write(src.join("a/deep/f"), b"one").expect("write");
        fs::write(src.join("a/g"), b"g").expect("write");
        fs::write(src.join("same/x/h"), b"h").expect("write");
        fs::write(src.join("doomed"), b"d").expect("write");
        fs::write(src.join("becomes_dir"), b"d").expect("write");
        let base = repo.import(&src, None).expect("import").id;

        fs::write(src.join("a/deep/f"), b"two").expect("write");
        fs::remove_file(src.join("doomed")).expect("rm");
        fs::remove_file(src.join("becomes_dir")).expect("rm");
        fs::create_dir_all(src.join("becomes_dir/in")).expect("mkdir");
        fs::write(src.join("becomes_dir/in/k"), b"k").expect("write");
        fs::set_permissions(src.join("a/g"), fs::Permissions::from_mode(0o600)).expect("chmod");
        let id = repo.import(&src, None).expect("import").id;

        let out = dir.path().join("delta");
        let mut gone = Vec::new();
        let limits = DeltaLimits {
            paths: 100,
            bytes: 1 << 20,
        };
        let stats = repo
            .export_delta(base, id, &out, limits, &mut |p| {
                gone.push(p.strip_prefix(&out).expect("inside").to_path_buf());
                Ok(())
            })
            .expect("delta")
            .expect("within limits");
        assert_eq!(gone, vec![PathBuf::from("doomed")]);
        assert_eq!(
            listing(&out),
            vec![
                "a 40755",
                "a/deep 40755",
                "a/deep/f 100644",
                "a/g 100600",
                "becomes_dir 40755",
                "becomes_dir/in 40755",
                "becomes_dir/in/k 100644",
            ],
            "`same` is untouched, so absent"
        );
        assert_eq!(fs::read(out.join("a/deep/f")).expect("read"), b"two");
        assert_eq!(stats.deleted, 1);
        assert_eq!(stats.paths, 8);
        // Directory mtimes are the snapshot's, set after their children.
        let want = fs::metadata(src.join("a/deep")).expect("stat").modified();
        let got = fs::metadata(out.join("a/deep")).expect("stat").modified();
        assert_eq!(got.expect("mtime"), want.expect("mtime"));
    }

    #[test]
    fn an_mtime_alone_is_a_difference_and_limits_write_nothing() {
        let (dir, repo) = repo();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).expect("mkdir");
        for i in 0..10 {
            fs::write(src.join(format!("f{i}")), b"x").expect("write");
        }
        let base = repo.import(&src, None).expect("import").id;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        fs::File::options()
            .write(true)
            .open(src.join("f3"))
            .and_then(|f| f.set_modified(t))
            .expect("mtime");
        let id = repo.import(&src, None).expect("import").id;
        let out = dir.path().join("delta");
        let limits = DeltaLimits {
            paths: 100,
            bytes: 100,
        };
        let s = repo
            .export_delta(base, id, &out, limits, &mut |_| Ok(()))
            .expect("delta")
            .expect("within limits");
        assert_eq!(s.paths, 1);
        assert_eq!(
            fs::metadata(out.join("f3"))
                .expect("stat")
                .modified()
                .expect("mtime"),
            t
        );

        for i in 0..10 {
            fs::write(src.join(format!("f{i}")), b"changed").expect("write");
        }
        let big = repo.import(&src, None).expect("import").id;
        let out2 = dir.path().join("delta2");
        let tight = DeltaLimits {
            paths: 5,
            bytes: 1 << 20,
        };
        let none = repo
            .export_delta(base, big, &out2, tight, &mut |_| Ok(()))
            .expect("delta");
        assert_eq!(none, None);
        assert!(!out2.exists(), "nothing written over the limits");
    }

    #[test]
    fn a_failing_marker_leaves_nothing_behind() {
        let (dir, repo) = repo();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).expect("mkdir");
        fs::write(src.join("f"), b"x").expect("write");
        let base = repo.import(&src, None).expect("import").id;
        fs::remove_file(src.join("f")).expect("rm");
        let id = repo.import(&src, None).expect("import").id;
        let out = dir.path().join("delta");
        let limits = DeltaLimits {
            paths: 10,
            bytes: 10,
        };
        let r = repo.export_delta(base, id, &out, limits, &mut |p| {
            Err(Error::io(
                format!("mark {}", p.display()),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ))
        });
        assert!(r.is_err());
        assert!(!out.exists());
    }
}
