//! Three-way merge of two snapshots against their common ancestor in the snapshot tree.
//!
//! Paths are merged by the usual three-way rule: a path changed on one side only takes
//! that side; changed alike on both, it takes either; changed differently on both, it is
//! merged further where that is safe (two directories entry by entry, two text files line
//! by line) and is a conflict otherwise. Subtrees equal on two of the three sides are
//! decided by their fingerprints without being loaded, so a merge costs
//! O(differences × depth), not O(tree). The result lands through the one commit path as
//! a child of `a` that records `b` as merged into it; a merge with conflicts writes no
//! snapshot and names every conflicting path.

use std::collections::HashSet;
use std::sync::Arc;

use crate::commit::{self, Built, ChangeSource, Landing};
use crate::diff::{self, Change};
use crate::error::{Error, Result};
use crate::ids::SnapshotId;
use crate::name::Name;
use crate::repo::{Repo, Shared};
use crate::snapshot::{Snapshot, SnapshotRequest};
use crate::store::ObjectWriter;
use crate::tree::{self, Attrs, Content, DirNode, EntryKind, EntryRef, Merged, TreeRef};

/// Files larger than this are never merged line by line (a conflict when both sides
/// changed them): all three versions are held in memory while merging.
pub const LINE_MERGE_MAX: u64 = 1 << 20;

impl Repo {
    /// The nearest common ancestor of `a` and `b` in the snapshot tree, following
    /// parents and the snapshots merges merged in; `None` when they share none (two
    /// imports). A snapshot is its own ancestor, so it is `a` when `a` is an ancestor
    /// of `b`. Ids grow from parent to child, so the greatest common ancestor is one
    /// that no other common ancestor descends from. O(history of both).
    pub fn merge_base(&self, a: SnapshotId, b: SnapshotId) -> Result<Option<SnapshotId>> {
        let of_a = self.ancestors(a)?;
        let of_b = self.ancestors(b)?;
        Ok(of_a.intersection(&of_b).max().copied())
    }

    /// `id` and every snapshot it descends from (a pruned merged-in snapshot ends its
    /// line: its own ancestors are still reached through `parent` links where shared).
    fn ancestors(&self, id: SnapshotId) -> Result<HashSet<SnapshotId>> {
        let mut seen = HashSet::new();
        let mut todo = vec![(id, true)];
        while let Some((id, required)) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            let s = match self.snapshot(id) {
                Ok(s) => s,
                Err(Error::SnapshotNotFound(_)) if !required => {
                    seen.remove(&id);
                    continue;
                }
                Err(e) => return Err(e),
            };
            todo.extend(s.parent.map(|p| (p, true)));
            todo.extend(s.merged.map(|m| (m, false)));
        }
        Ok(seen)
    }

    /// Merges snapshot `b` into snapshot `a`: a new snapshot, child of `a`, recording
    /// `b` as merged, whose tree has the changes of both since their common ancestor.
    /// Fails with `Error::Conflict` naming every path both sides changed in ways that do
    /// not merge, and with `Error::NoCommonAncestor` for unrelated snapshots; nothing is
    /// written on failure.
    pub fn merge(&self, a: SnapshotId, b: SnapshotId, req: SnapshotRequest) -> Result<Snapshot> {
        let start = std::time::Instant::now();
        let _gc = self.shared.gc_lock.read();
        let (sa, sb) = (self.snapshot(a)?, self.snapshot(b)?);
        let base = self
            .merge_base(a, b)?
            .ok_or(Error::NoCommonAncestor(a, b))?;
        let so = self.snapshot(base)?;
        let mut source = MergeSource {
            shared: &self.shared,
            base: so.tree_ref(),
            ours: sa.tree_ref(),
            theirs: sb.tree_ref(),
        };
        let landing = Landing::snapshot(Some(a), Some(b), req, start);
        let w = self.shared.store.writer();
        commit::land(&self.shared, &mut source, w, landing)?.into_snapshot()
    }
}

/// Three trees merged, as a source of changes for the commit path.
struct MergeSource<'a> {
    shared: &'a Shared,
    base: TreeRef,
    ours: TreeRef,
    theirs: TreeRef,
}

impl ChangeSource for MergeSource<'_> {
    fn build(&mut self, w: &mut ObjectWriter<'_>) -> Result<Built> {
        let mut m = Merger {
            shared: self.shared,
            w,
            conflicts: Vec::new(),
            changed: 0,
        };
        let (o, a, b) = (self.base.entry(), self.ours.entry(), self.theirs.entry());
        let merged = m.entry("", Some(&o), Some(&a), Some(&b))?;
        if !m.conflicts.is_empty() {
            return Err(Error::Conflict(m.conflicts));
        }
        let tree = match merged {
            Some(EntryKind::Dir { node, fp, bytes }) => TreeRef { node, fp, bytes },
            // The root is a directory on every side, so it merges into one.
            _ => {
                return Err(Error::InvalidArgument(
                    "the merged root is not a directory".into(),
                ));
            }
        };
        Ok(Built {
            tree,
            changed_paths: m.changed,
        })
    }
}

/// Equal for the merge: the fingerprint's equality (mtimes aside).
fn same(x: Option<&EntryKind>, y: Option<&EntryKind>) -> bool {
    match (x, y) {
        (None, None) => true,
        (Some(x), Some(y)) => x.as_ref().same_content(&y.as_ref()),
        _ => false,
    }
}

fn same_attrs(a: &Attrs, b: &Attrs) -> bool {
    (a.mode, a.uid, a.gid, &a.xattrs) == (b.mode, b.uid, b.gid, &b.xattrs)
}

/// The three-way choice of one value: `None` when both sides changed it differently.
fn pick3<'t, T>(o: Option<&T>, a: &'t T, b: &'t T, eq: impl Fn(&T, &T) -> bool) -> Option<&'t T> {
    if eq(a, b) || o.is_some_and(|o| eq(o, b)) {
        Some(a)
    } else if o.is_some_and(|o| eq(o, a)) {
        Some(b)
    } else {
        None
    }
}

struct Merger<'s, 'w, 'x> {
    shared: &'s Shared,
    w: &'x mut ObjectWriter<'w>,
    conflicts: Vec<String>,
    /// Paths where the result differs from `a` (the new snapshot's parent).
    changed: u64,
}

impl Merger<'_, '_, '_> {
    /// The merged entry at `path` (`None`: absent), given its base, ours and theirs.
    fn entry(
        &mut self,
        path: &str,
        o: Option<&EntryKind>,
        a: Option<&EntryKind>,
        b: Option<&EntryKind>,
    ) -> Result<Option<EntryKind>> {
        if same(a, b) || same(o, b) {
            return Ok(a.cloned());
        }
        if same(o, a) {
            self.changed += self.count(path, a, b)?;
            return Ok(b.cloned());
        }
        // Changed differently on both sides.
        match (o, a, b) {
            (_, Some(EntryKind::Dir { .. }), Some(EntryKind::Dir { .. }))
            | (Some(EntryKind::Dir { .. }), Some(EntryKind::Dir { .. }), None)
            | (Some(EntryKind::Dir { .. }), None, Some(EntryKind::Dir { .. })) => {
                self.dirs(path, o, a, b)
            }
            (_, Some(fa @ EntryKind::File { .. }), Some(fb @ EntryKind::File { .. })) => {
                let merged = self.files(path, o, fa, fb)?;
                if merged.is_some() && !same(merged.as_ref(), a) {
                    self.changed += 1;
                }
                Ok(merged.or_else(|| a.cloned()))
            }
            _ => {
                self.conflict(path);
                Ok(a.cloned())
            }
        }
    }

    fn conflict(&mut self, path: &str) {
        self.conflicts.push(if path.is_empty() {
            "/".into()
        } else {
            path.to_string()
        });
    }

    /// Paths that differ between `a` and `b` at `path` (both stored): what taking `b`
    /// over `a` changes.
    fn count(&self, path: &str, a: Option<&EntryKind>, b: Option<&EntryKind>) -> Result<u64> {
        let mut out: Vec<Change> = Vec::new();
        diff::entries(&self.shared.store, path, a, b, &mut out)?;
        Ok(out.len() as u64)
    }

    /// Two directories (one may be deleted, the base a directory then) merged entry by
    /// entry. A side that deleted the directory counts as having deleted each entry and
    /// kept the attributes; if nothing is left, the directory stays deleted.
    fn dirs(
        &mut self,
        path: &str,
        o: Option<&EntryKind>,
        a: Option<&EntryKind>,
        b: Option<&EntryKind>,
    ) -> Result<Option<EntryKind>> {
        let load = |k: Option<&EntryKind>| -> Result<Option<Arc<DirNode>>> {
            match k {
                Some(EntryKind::Dir { node, .. }) => Ok(Some(self.shared.node(node)?)),
                _ => Ok(None),
            }
        };
        let (no, na, nb) = (load(o)?, load(a)?, load(b)?);
        // A side that deleted the directory kept the base's attributes.
        let base_attrs = no.as_ref().map(|d| d.attrs.clone()).unwrap_or_default();
        let side = |n: &Option<Arc<DirNode>>| -> (Attrs, Arc<DirNode>) {
            match n {
                Some(d) => (d.attrs.clone(), d.clone()),
                None => (base_attrs.clone(), Arc::new(DirNode::default())),
            }
        };
        let ((aa, da), (ab, db)) = (side(&na), side(&nb));
        let attrs = match pick3(no.as_ref().map(|d| &d.attrs), &aa, &ab, same_attrs) {
            Some(at) => Attrs {
                mtime: aa.mtime.max(ab.mtime),
                ..at.clone()
            },
            None => {
                self.conflict(path);
                aa.clone()
            }
        };
        if a.is_some() && !same_attrs(&attrs, &aa) {
            self.changed += 1;
        }
        let mut entries: Vec<(Name, EntryKind)> = Vec::new();
        for step in tree::merge_entries(&da.entries, &db.entries) {
            let (name, ka, kb) = match step {
                Merged::Left(n, k) => (n, Some(k), None),
                Merged::Right(n, k) => (n, None, Some(k)),
                Merged::Both(n, ka, kb) => (n, Some(ka), Some(kb)),
            };
            let ko = no.as_ref().and_then(|d| d.get(name));
            let child = format!("{path}/{name}");
            let child = child.trim_start_matches('/');
            if let Some(k) = self.entry(child, ko, ka, kb)? {
                entries.push((name.clone(), k));
            }
        }
        if entries.is_empty() && (a.is_none() || b.is_none()) {
            // Deleted on one side, and nothing the other side added is left: deleted.
            if a.is_some() {
                self.changed += 1;
            }
            return Ok(None);
        }
        if a.is_none() {
            // Deleted by `a`, kept because `b` added or changed something below it.
            self.changed += 1;
        }
        let refs: Vec<(&Name, EntryRef<'_>)> =
            entries.iter().map(|(n, k)| (n, k.as_ref())).collect();
        let t = tree::encode_dir(&attrs, &refs).store(self.w)?;
        Ok(Some(t.entry()))
    }

    /// Two regular files changed differently: attributes merged three-way, contents
    /// line by line when all three are text and small enough. `None` (and the path
    /// listed as a conflict) when they do not merge.
    fn files(
        &mut self,
        path: &str,
        o: Option<&EntryKind>,
        a: &EntryKind,
        b: &EntryKind,
    ) -> Result<Option<EntryKind>> {
        let (
            EntryKind::File {
                attrs: aa,
                content: ca,
            },
            EntryKind::File {
                attrs: ab,
                content: cb,
            },
        ) = (a, b)
        else {
            self.conflict(path);
            return Ok(None);
        };
        let (oa, oc) = match o {
            Some(EntryKind::File { attrs, content }) => (Some(attrs), Some(content)),
            _ => (None, None),
        };
        let Some(attrs) = pick3(oa, aa, ab, same_attrs) else {
            self.conflict(path);
            return Ok(None);
        };
        let mut attrs = attrs.clone();
        attrs.mtime = aa.mtime.max(ab.mtime);
        let content = match pick3(oc, ca, cb, |x, y| x == y) {
            Some(c) => *c,
            None => match self.lines(oc, ca, cb)? {
                Some(c) => c,
                None => {
                    self.conflict(path);
                    return Ok(None);
                }
            },
        };
        Ok(Some(EntryKind::File { attrs, content }))
    }

    /// A line-by-line three-way merge of text contents (`o` absent: both added), stored;
    /// `None` when a side is not text, too large, or the edits overlap.
    fn lines(&mut self, o: Option<&Content>, a: &Content, b: &Content) -> Result<Option<Content>> {
        let sides = [o, Some(a), Some(b)];
        if sides.iter().flatten().any(|c| c.size > LINE_MERGE_MAX) {
            return Ok(None);
        }
        let mut texts: Vec<Vec<u8>> = Vec::with_capacity(3);
        for c in sides {
            let mut bytes = Vec::new();
            if let Some(c) = c {
                tree::write_content(&self.shared.store, c, &mut bytes)?;
            }
            // Git's test for binary data: a NUL byte.
            if bytes.contains(&0) {
                return Ok(None);
            }
            texts.push(bytes);
        }
        match diffy::merge_bytes(&texts[0], &texts[1], &texts[2]) {
            Ok(merged) => Ok(Some(tree::store_file(self.w, merged.as_slice())?)),
            Err(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    fn merge(o: &str, a: &str, b: &str) -> Option<String> {
        diffy::merge(o, a, b).ok()
    }

    #[test]
    fn lines_merge_where_edits_are_apart_and_conflict_where_they_overlap() {
        let o = "1\n2\n3\n4\n5\n";
        let first = "one\n2\n3\n4\n5\n";
        assert_eq!(
            merge(o, first, "1\n2\n3\n4\nfive\n").as_deref(),
            Some("one\n2\n3\n4\nfive\n")
        );
        assert_eq!(merge(o, first, "uno\n2\n3\n4\n5\n"), None, "the same line");
        assert_eq!(
            merge(o, first, first).as_deref(),
            Some(first),
            "the same edit"
        );
        assert_eq!(
            merge(o, "1\n2\n3\n4\n5\nsix\n", "1\n2\n3\n4\n5\nseven\n"),
            None,
            "two different appends"
        );
        assert_eq!(
            merge(o, first, "1\ntwo\n3\n4\n5\n"),
            None,
            "adjacent lines touch"
        );
    }
}
