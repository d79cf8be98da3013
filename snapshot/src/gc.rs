//! Garbage collection (mark from every snapshot and workspace, sweep the rest) and fsck
//! (verify every object's hash and every reference).

use std::collections::HashSet;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::journal;
use crate::repo::{Repo, empty_node};
use crate::snapshot;
use crate::store::{Batch, Cf, Durability, Store};
use crate::tree::{self, Content, DirNode, EntryKind};

/// What gc reclaimed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Objects deleted.
    pub freed_objects: u64,
    /// Encoded bytes they took.
    pub freed_bytes: u64,
}

/// What fsck found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FsckReport {
    /// Objects whose bytes were read and hashed.
    pub objects_checked: u64,
    /// Snapshot records checked.
    pub snapshots_checked: u64,
    /// Workspace records checked.
    pub workspaces_checked: u64,
    /// Every problem found; empty means the store is sound.
    pub errors: Vec<String>,
}

impl FsckReport {
    /// True when no problem was found.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Adds every object reachable from the directory node `root` to `live`.
fn mark(store: &Store, root: Hash, live: &mut HashSet<Hash>) -> Result<()> {
    let mut stack = vec![root];
    while let Some(h) = stack.pop() {
        if live.contains(&h) {
            continue;
        }
        live.extend(tree::dir_objects(store, &h)?);
        let node = DirNode::load(store, &h)?;
        for (_, kind) in &node.entries {
            match kind {
                EntryKind::Dir { node, .. } => stack.push(*node),
                EntryKind::File { content, .. } if live.insert(content.hash) && content.chunked => {
                    for (c, _) in tree::chunks_of(store, content)? {
                        live.insert(c);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

impl Repo {
    /// The tree roots that must stay: every snapshot's tree, every workspace's saved head
    /// and the empty tree.
    fn roots(&self) -> Result<(Vec<Hash>, Vec<Content>)> {
        let mut roots: Vec<Hash> = snapshot::all(self.backend())?
            .iter()
            .map(|s| s.tree)
            .collect();
        let mut files = Vec::new();
        for w in self.workspaces()? {
            roots.extend(w.head.map(|h| h.node));
            // What a workspace synced but has not committed refers to stored objects.
            let (dirs, contents) = journal::refs(&journal::load(self.backend(), w.id)?);
            roots.extend(dirs);
            files.extend(contents);
        }
        roots.push(empty_node().encode().tref.node);
        Ok((roots, files))
    }

    /// Deletes every object that no snapshot or workspace reaches.
    pub fn gc(&self) -> Result<GcReport> {
        let _gc = self.shared.gc_lock.write();
        let store = self.store();
        let mut live = HashSet::new();
        let (roots, files) = self.roots()?;
        for root in roots {
            match mark(store, root, &mut live) {
                // The empty tree may never have been stored; nothing to keep then.
                Err(Error::MissingObject(h)) if h == root => {}
                other => other?,
            }
        }
        for content in files {
            if live.insert(content.hash) && content.chunked {
                for (c, _) in tree::chunks_of(store, &content)? {
                    live.insert(c);
                }
            }
        }
        // An object stored as a delta (`pack.rs`) needs its base, live or not.
        let mut bases = std::collections::HashMap::new();
        self.backend().scan(Cf::Objects, &[], &mut |k, v| {
            if let Some(b) = crate::store::codec::delta_base(v) {
                bases.insert(Hash::from_slice(k)?, b);
            }
            Ok(true)
        })?;
        let mut stack: Vec<Hash> = live.iter().filter_map(|h| bases.get(h)).copied().collect();
        while let Some(b) = stack.pop() {
            if live.insert(b)
                && let Some(next) = bases.get(&b)
            {
                stack.push(*next);
            }
        }
        let mut report = GcReport::default();
        let (mut live_objects, mut live_bytes) = (0u64, 0u64);
        let mut batch = Batch::new();
        let mut dead = Vec::new();
        self.backend().scan(Cf::Objects, &[], &mut |k, v| {
            let h = Hash::from_slice(k)?;
            if live.contains(&h) {
                live_objects += 1;
                live_bytes += v.len() as u64;
            } else {
                report.freed_objects += 1;
                report.freed_bytes += v.len() as u64;
                batch.delete(Cf::Objects, k.to_vec());
                dead.push(h);
            }
            Ok(true)
        })?;
        self.backend().write(batch, Durability::Sync)?;
        for h in &dead {
            store.evict(h);
        }
        store.reset_counters(live_objects, live_bytes)?;
        self.sweep_file_cache(&live);
        Ok(report)
    }

    /// Removes materialized files whose content is no longer live.
    fn sweep_file_cache(&self, live: &HashSet<Hash>) {
        let cache = self.dir().join("cache");
        let Ok(shards) = std::fs::read_dir(&cache) else {
            return;
        };
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let keep = name
                    .to_str()
                    .and_then(|n| n.parse::<Hash>().ok())
                    .is_some_and(|h| live.contains(&h));
                if !keep {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }

    /// Verifies every object's hash, that every reference resolves, and the records.
    pub fn fsck(&self) -> Result<FsckReport> {
        let _gc = self.shared.gc_lock.write();
        let store = self.store();
        let mut report = FsckReport::default();
        let (mut objects, mut bytes) = (0u64, 0u64);
        let mut memo = Memo::default();
        self.backend().scan(Cf::Objects, &[], &mut |k, v| {
            objects += 1;
            bytes += v.len() as u64;
            match Hash::from_slice(k) {
                Ok(h) => {
                    if let Err(e) = store.decode_value(&h, v) {
                        report.errors.push(e.to_string());
                        memo.bad.insert(h);
                    }
                }
                Err(_) => report
                    .errors
                    .push(format!("object key of {} bytes", k.len())),
            }
            Ok(true)
        })?;
        report.objects_checked = objects;
        let snaps = match snapshot::all(self.backend()) {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(e.to_string());
                Vec::new()
            }
        };
        let ids: HashSet<_> = snaps.iter().map(|s| s.id).collect();
        let mut damaged_snaps = HashSet::new();
        for s in &snaps {
            report.snapshots_checked += 1;
            if let Some(p) = s.parent
                && !ids.contains(&p)
            {
                report
                    .errors
                    .push(format!("snapshot {} has missing parent {p}", s.id));
            }
            if self.check_tree(
                store,
                s.tree,
                &mut memo,
                &format!("snapshot {}", s.id),
                &mut report,
            ) {
                damaged_snaps.insert(s.id);
            }
            match DirNode::load(store, &s.tree) {
                Ok(n) if n.encode().tref.fp != s.root => {
                    report
                        .errors
                        .push(format!("snapshot {} root does not match its tree", s.id));
                }
                _ => {}
            }
        }
        match self.workspaces() {
            Ok(ws) => {
                for w in ws {
                    report.workspaces_checked += 1;
                    if let Some(b) = w.base
                        && !ids.contains(&b)
                    {
                        report
                            .errors
                            .push(format!("workspace {} stands on missing snapshot {b}", w.id));
                    }
                    if let Some(b) = w.base
                        && damaged_snaps.contains(&b)
                        && w.head.is_none()
                    {
                        report.errors.push(format!(
                            "workspace {} stands on snapshot {b}, which reaches damaged objects",
                            w.id
                        ));
                    }
                    if let Some(h) = w.head {
                        self.check_tree(
                            store,
                            h.node,
                            &mut memo,
                            &format!("workspace {}", w.id),
                            &mut report,
                        );
                    }
                    match journal::load(self.backend(), w.id) {
                        Ok(records) => {
                            let (dirs, files) = journal::refs(&records);
                            let owner = format!("workspace {} (journal)", w.id);
                            for d in dirs {
                                self.check_tree(store, d, &mut memo, &owner, &mut report);
                            }
                            for c in files {
                                if !matches!(store.contains(&c.hash), Ok(true)) {
                                    report.errors.push(format!(
                                        "{owner}: object {} is missing from the store",
                                        c.hash
                                    ));
                                }
                            }
                        }
                        Err(e) => report.errors.push(format!("workspace {}: {e}", w.id)),
                    }
                }
            }
            Err(e) => report.errors.push(e.to_string()),
        }
        if report.ok() {
            store.reset_counters(objects, bytes)?;
        }
        Ok(report)
    }

    /// Checks the tree at `root` for `owner`; true when it reaches a damaged object. Each
    /// subtree is read once per fsck; a later owner reaching a damaged one is named too.
    fn check_tree(
        &self,
        store: &Store,
        root: Hash,
        memo: &mut Memo,
        owner: &str,
        report: &mut FsckReport,
    ) -> bool {
        !self
            .check_dir(store, root, "", memo, owner, report)
            .is_empty()
    }

    fn check_dir(
        &self,
        store: &Store,
        h: Hash,
        path: &str,
        memo: &mut Memo,
        owner: &str,
        report: &mut FsckReport,
    ) -> Vec<Hash> {
        let shown = if path.is_empty() { "/" } else { path };
        if let Some(d) = memo.seen.get(&h) {
            for x in d {
                report
                    .errors
                    .push(format!("{owner}: {shown}: reaches damaged object {x}"));
            }
            return d.clone();
        }
        let node = match DirNode::load(store, &h) {
            Ok(n) => n,
            Err(e) => {
                report.errors.push(format!("{owner}: {shown}: {e}"));
                memo.seen.insert(h, vec![h]);
                return vec![h];
            }
        };
        let mut damaged = Vec::new();
        for (name, kind) in &node.entries {
            let p = format!("{path}/{name}");
            let sub = match kind {
                EntryKind::Dir { node, .. } => {
                    self.check_dir(store, *node, &p, memo, owner, report)
                }
                EntryKind::File { content, .. } => {
                    self.check_file(store, content, &p, memo, owner, report)
                }
                _ => Vec::new(),
            };
            for x in sub {
                if damaged.len() < 8 && !damaged.contains(&x) {
                    damaged.push(x);
                }
            }
        }
        memo.seen.insert(h, damaged.clone());
        damaged
    }

    fn check_file(
        &self,
        store: &Store,
        content: &Content,
        path: &str,
        memo: &mut Memo,
        owner: &str,
        report: &mut FsckReport,
    ) -> Vec<Hash> {
        if let Some(d) = memo.seen.get(&content.hash) {
            for x in d {
                report
                    .errors
                    .push(format!("{owner}: file {path}: reaches damaged object {x}"));
            }
            return d.clone();
        }
        let mut damaged = Vec::new();
        if memo.bad.contains(&content.hash) {
            report.errors.push(format!(
                "{owner}: file {path}: object {} is corrupt",
                content.hash
            ));
            damaged.push(content.hash);
        } else {
            match tree::chunks_of(store, content) {
                Err(e) => {
                    report.errors.push(format!("{owner}: file {path}: {e}"));
                    damaged.push(content.hash);
                }
                Ok(chunks) => {
                    let total: u64 = chunks.iter().map(|(_, l)| *l as u64).sum();
                    if total != content.size {
                        report.errors.push(format!(
                            "{owner}: file {path}: chunks hold {total} bytes, entry says {}",
                            content.size
                        ));
                        damaged.push(content.hash);
                    }
                    for (c, _) in chunks {
                        let problem = if memo.bad.contains(&c) {
                            Some("is corrupt".to_string())
                        } else {
                            match store.contains(&c) {
                                Ok(true) => None,
                                Ok(false) => Some("is missing".to_string()),
                                Err(e) => Some(e.to_string()),
                            }
                        };
                        if let Some(p) = problem {
                            report
                                .errors
                                .push(format!("{owner}: file {path}: chunk {c} {p}"));
                            if damaged.len() < 8 {
                                damaged.push(c);
                            }
                        }
                    }
                }
            }
        }
        memo.seen.insert(content.hash, damaged.clone());
        damaged
    }
}

/// What fsck learned so far: objects whose bytes do not match their hash, and the
/// damaged objects below every directory or content already checked.
#[derive(Default)]
struct Memo {
    bad: HashSet<Hash>,
    seen: std::collections::HashMap<Hash, Vec<Hash>>,
}
