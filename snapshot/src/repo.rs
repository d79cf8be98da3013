//! `Repo`: one state directory — the store, the snapshot tree and the workspaces — and
//! the operations that span them (fork, prune, stats).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::commit::{self, Landing};
use crate::edits::{EditSource, Edits};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::ids::{SnapshotId, WorkspaceId};
use crate::snapshot::{self, Snapshot};
use crate::store::rocks::RocksBackend;
use crate::store::{Backend, Batch, Cf, Durability, Store};
use crate::tree::{self, Content, DirNode, EntryKind, TreeRef};
use crate::workspace::{Workspace, WorkspaceRecord};

const META_NEXT_SNAPSHOT: &[u8] = b"next_snapshot";
const META_NEXT_WORKSPACE: &[u8] = b"next_workspace";

/// Default byte budget of the in-memory object cache.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// State shared by the repo and its workspaces.
pub(crate) struct Shared {
    pub(crate) store: Store,
    /// Decoded directory nodes, so loads and commits do not decode the same node again.
    nodes: quick_cache::sync::Cache<Hash, Arc<DirNode>, NodeWeight>,
    /// Names below a directory node (for quotas), by node: a tree shares most of its
    /// directories with its parent snapshot's, so counting a new one walks only the
    /// directories that changed.
    names: quick_cache::sync::Cache<Hash, u64>,
    pub(crate) dir: PathBuf,
    /// Commits hold it shared; gc holds it exclusively, so it never sweeps objects that
    /// a commit in flight has staged but not yet referenced.
    pub(crate) gc_lock: RwLock<()>,
    next_snapshot: AtomicU64,
    next_workspace: AtomicU64,
    /// Snapshots and their summed file bytes, counted at open and kept current, so that
    /// stats (and every metrics scrape) cost O(1), not a scan of every record.
    snapshot_count: AtomicU64,
    logical_bytes: AtomicU64,
    /// Materialized files checked (or built) by this process.
    verified: Mutex<HashSet<Hash>>,
    /// Serialize read-modify-writes of one snapshot record (by id, striped).
    record_locks: [Mutex<()>; RECORD_LOCKS],
}

const RECORD_LOCKS: usize = 64;

#[derive(Clone)]
struct NodeWeight;

impl quick_cache::Weighter<Hash, Arc<DirNode>> for NodeWeight {
    fn weight(&self, _: &Hash, v: &Arc<DirNode>) -> u64 {
        64 + v.entries.len() as u64 * 112
    }
}

/// Directory nodes whose name count `count_names` keeps.
const NAMES_CACHED: usize = 1 << 18;

/// Byte budget of the decoded-node cache.
const NODE_CACHE_BYTES: u64 = 64 << 20;

impl Shared {
    /// A directory node, decoded once and cached.
    pub(crate) fn node(&self, hash: &Hash) -> Result<Arc<DirNode>> {
        if let Some(n) = self.nodes.get(hash) {
            return Ok(n);
        }
        let n = Arc::new(DirNode::load(&self.store, hash)?);
        self.nodes.insert(*hash, n.clone());
        Ok(n)
    }

    /// The names below directory node `node` (every entry of every directory, once per
    /// name), memoized by node.
    pub(crate) fn count_names(&self, node: &Hash) -> Result<u64> {
        if let Some(n) = self.names.get(node) {
            return Ok(n);
        }
        let dir = self.node(node)?;
        let mut n = dir.entries.len() as u64;
        for (_, e) in &dir.entries {
            if let EntryKind::Dir { node, .. } = e {
                n += self.count_names(node)?;
            }
        }
        self.names.insert(*node, n);
        Ok(n)
    }

    pub(crate) fn workspace_dir(&self, id: WorkspaceId) -> PathBuf {
        self.dir.join("workspaces").join(id.to_string())
    }

    pub(crate) fn alloc_snapshot_id(&self) -> SnapshotId {
        SnapshotId(self.next_snapshot.fetch_add(1, Ordering::SeqCst))
    }

    /// The last snapshot id handed out (0 before the first).
    pub(crate) fn last_snapshot_id(&self) -> u64 {
        self.next_snapshot.load(Ordering::SeqCst).saturating_sub(1)
    }

    /// Counts snapshots added (positive) or removed (negative) with their bytes.
    pub(crate) fn count_snapshots(&self, n: i64, bytes: i64) {
        let add = |a: &AtomicU64, d: i64| {
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_add_signed(d))
            });
        };
        add(&self.snapshot_count, n);
        add(&self.logical_bytes, bytes);
    }

    fn alloc_workspace_id(&self) -> WorkspaceId {
        WorkspaceId(self.next_workspace.fetch_add(1, Ordering::SeqCst))
    }

    /// Adds the id counters to a batch, so an id is never handed out twice.
    pub(crate) fn stage_counters(&self, batch: &mut Batch) {
        batch.put(
            Cf::Meta,
            META_NEXT_SNAPSHOT,
            self.next_snapshot.load(Ordering::SeqCst).to_be_bytes(),
        );
        batch.put(
            Cf::Meta,
            META_NEXT_WORKSPACE,
            self.next_workspace.load(Ordering::SeqCst).to_be_bytes(),
        );
    }

    fn cache_path(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_string();
        self.dir.join("cache").join(&hex[..2]).join(hex)
    }

    /// Remembers that the cache file of `hash` was checked; bounded (past it, files are
    /// checked again on their next use).
    fn note_verified(&self, hash: Hash) {
        let mut v = self.verified.lock();
        if v.len() >= VERIFIED_MAX {
            v.clear();
        }
        v.insert(hash);
    }

    /// A read-only real file with `content`'s bytes, built once per content hash and
    /// shared by every workspace (the materialized-file cache). A file found in the cache
    /// is checked against its hash the first time this process hands it out (it may have
    /// been damaged on disk since it was built): a damaged one is rebuilt from the store,
    /// whose every read is verified, so an engine never serves wrong bytes.
    pub(crate) fn materialize(&self, content: &Content) -> Result<PathBuf> {
        let path = self.cache_path(&content.hash);
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.len() == content.size
        {
            if self.verified.lock().contains(&content.hash) {
                return Ok(path);
            }
            let found = std::fs::File::open(&path)
                .map_err(|e| Error::io(format!("open {}", path.display()), e))
                .and_then(|f| tree::hash_file(std::io::BufReader::with_capacity(256 << 10, f)));
            match found {
                Ok(c) if c == *content => {
                    self.note_verified(content.hash);
                    return Ok(path);
                }
                other => {
                    tracing::error!(path = %path.display(), found = ?other.map(|c| c.hash), "a materialized file does not match its content; rebuilding it from the store");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let f = std::fs::File::create(&tmp)
                .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
            let mut out = std::io::BufWriter::with_capacity(256 << 10, f);
            tree::write_content(&self.store, content, &mut out)?;
            let f = out
                .into_inner()
                .map_err(|e| Error::io("write cache file", e.into_error()))?;
            let mut perms = f
                .metadata()
                .map_err(|e| Error::io("stat cache file", e))?
                .permissions();
            perms.set_readonly(true);
            f.set_permissions(perms)
                .map_err(|e| Error::io("chmod cache file", e))?;
            std::fs::rename(&tmp, &path)
                .map_err(|e| Error::io(format!("rename into {}", path.display()), e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        } else {
            self.note_verified(content.hash);
        }
        result.map(|()| path)
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Cache files remembered as checked, at most (32 bytes each and the set's overhead).
const VERIFIED_MAX: usize = 1 << 18;

/// Counters for `/v1/stats`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Objects in the store.
    pub objects: u64,
    /// Bytes the objects take, encoded.
    pub stored_bytes: u64,
    /// Bytes of file content summed over every snapshot.
    pub logical_bytes: u64,
    /// `logical_bytes / stored_bytes`.
    pub dedup_ratio: f64,
    /// Snapshots.
    pub snapshots: u64,
    /// Workspaces.
    pub workspaces: u64,
    /// Object cache hits since open.
    pub cache_hits: u64,
    /// Object cache misses since open.
    pub cache_misses: u64,
}

/// One state directory: store, snapshots and workspaces.
pub struct Repo {
    pub(crate) shared: Arc<Shared>,
    open: Mutex<HashMap<WorkspaceId, Weak<Workspace>>>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl Repo {
    /// Opens (creating if needed) the repo in `dir`, with RocksDB in `dir/db`.
    pub fn open(dir: &Path) -> Result<Repo> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let backend = RocksBackend::open(&dir.join("db"))?;
        Repo::open_with(dir, Arc::new(backend), DEFAULT_CACHE_BYTES)
    }

    /// Opens a repo over any backend; workspace files and the file cache live in `dir`.
    pub fn open_with(dir: &Path, backend: Arc<dyn Backend>, cache_bytes: u64) -> Result<Repo> {
        for sub in ["workspaces", "cache"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p)
                .map_err(|e| Error::io(format!("create {}", p.display()), e))?;
        }
        let store = Store::open(backend, cache_bytes)?;
        let read_counter = |key: &[u8]| -> Result<u64> {
            Ok(match store.backend().get(Cf::Meta, key)? {
                Some(v) if v.len() == 8 => {
                    u64::from_be_bytes(v.as_slice().try_into().unwrap_or_default())
                }
                _ => 1,
            })
        };
        // Counters are written with each record; records written after the counter (by a
        // concurrent commit) are found by scanning from it.
        let mut next_snapshot = read_counter(META_NEXT_SNAPSHOT)?.max(1);
        let (mut count, mut logical) = (0u64, 0u64);
        store.backend().scan(Cf::Snapshots, &[], &mut |k, v| {
            if let Some(id) = SnapshotId::from_key(k) {
                next_snapshot = next_snapshot.max(id.0 + 1);
            }
            let s: Snapshot = snapshot::decode_record(&format!("snapshots/{k:?}"), v)?;
            count += 1;
            logical = logical.saturating_add(s.bytes);
            Ok(true)
        })?;
        let mut next_workspace = read_counter(META_NEXT_WORKSPACE)?.max(1);
        store.backend().scan(Cf::Workspaces, &[], &mut |k, _| {
            if let Some(id) = WorkspaceId::from_key(k) {
                next_workspace = next_workspace.max(id.0 + 1);
            }
            Ok(true)
        })?;
        let shared = Arc::new(Shared {
            store,
            nodes: quick_cache::sync::Cache::with_weighter(16_384, NODE_CACHE_BYTES, NodeWeight),
            names: quick_cache::sync::Cache::new(NAMES_CACHED),
            dir: dir.to_path_buf(),
            gc_lock: RwLock::new(()),
            next_snapshot: AtomicU64::new(next_snapshot),
            next_workspace: AtomicU64::new(next_workspace),
            snapshot_count: AtomicU64::new(count),
            logical_bytes: AtomicU64::new(logical),
            verified: Mutex::new(HashSet::new()),
            record_locks: std::array::from_fn(|_| Mutex::new(())),
        });
        Ok(Repo {
            shared,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The object store.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    // ---- snapshots ----

    /// One snapshot.
    pub fn snapshot(&self, id: SnapshotId) -> Result<Snapshot> {
        snapshot::load(self.backend(), id)
    }

    /// Every snapshot, in id order.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        snapshot::all(self.backend())
    }

    /// Children of `parent` (`None`: the roots of the snapshot tree).
    pub fn children(&self, parent: Option<SnapshotId>) -> Result<Vec<SnapshotId>> {
        if let Some(p) = parent {
            self.snapshot(p)?;
        }
        snapshot::children(self.backend(), parent)
    }

    /// Snapshots whose state fingerprint is `root` (transpositions).
    pub fn by_root(&self, root: &Hash) -> Result<Vec<SnapshotId>> {
        snapshot::by_root(self.backend(), root)
    }

    /// The path from `id` up to its root: `[id, parent, grandparent, ...]`.
    pub fn ancestry(&self, id: SnapshotId) -> Result<Vec<SnapshotId>> {
        let mut out = vec![id];
        let mut cur = self.snapshot(id)?;
        while let Some(p) = cur.parent {
            out.push(p);
            cur = self.snapshot(p)?;
        }
        Ok(out)
    }

    /// Sets the label (`Some(None)` clears it) and merges annotations (a JSON `null`
    /// value removes a key).
    pub fn update_snapshot(
        &self,
        id: SnapshotId,
        label: Option<Option<String>>,
        annotations: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Snapshot> {
        self.update_snapshot_with(id, label, annotations, Durability::Sync)
    }

    /// `update_snapshot` with a chosen durability (`Buffered`: written to the log
    /// unsynced, as a buffered snapshot is). Updates of one record are serialized (a
    /// read-modify-write); others run in parallel with them and with commits.
    pub fn update_snapshot_with(
        &self,
        id: SnapshotId,
        label: Option<Option<String>>,
        annotations: Option<serde_json::Map<String, serde_json::Value>>,
        durability: Durability,
    ) -> Result<Snapshot> {
        // Shared: gc and prune (which take it exclusively) never run meanwhile; an
        // exclusive hold here stalled every commit behind each annotation.
        let _gc = self.shared.gc_lock.read();
        let _record = self.shared.record_locks[(id.0 % RECORD_LOCKS as u64) as usize].lock();
        let mut s = self.snapshot(id)?;
        if let Some(label) = label {
            s.label = label;
        }
        for (k, v) in annotations.unwrap_or_default() {
            if v.is_null() {
                s.annotations.remove(&k);
            } else {
                s.annotations.insert(k, v);
            }
        }
        let mut b = Batch::new();
        b.put(Cf::Snapshots, id.key(), snapshot::encode_record(&s));
        self.backend().write(b, durability)?;
        Ok(s)
    }

    /// Deletes a snapshot, or with `recursive` its whole subtree. Snapshots a workspace
    /// stands on are kept, and so are their ancestors (so the tree stays connected).
    /// Returns the ids removed.
    pub fn prune(&self, id: SnapshotId, recursive: bool) -> Result<Vec<SnapshotId>> {
        let _gc = self.shared.gc_lock.write();
        let root = self.snapshot(id)?;
        let in_use: HashMap<SnapshotId, WorkspaceId> = self
            .workspaces()?
            .into_iter()
            .flat_map(|w| {
                [w.base, w.lower]
                    .into_iter()
                    .flatten()
                    .map(move |b| (b, w.id))
            })
            .collect();
        let children = snapshot::children(self.backend(), Some(id))?;
        if !recursive {
            if let Some(w) = in_use.get(&id) {
                return Err(Error::InUse {
                    id,
                    why: format!("workspace {w} stands on it"),
                });
            }
            if !children.is_empty() {
                return Err(Error::InUse {
                    id,
                    why: format!("it has {} children; prune recursively", children.len()),
                });
            }
        }
        // Collect the subtree, parents before children.
        let mut order = vec![root];
        let mut i = 0;
        while i < order.len() {
            for c in snapshot::children(self.backend(), Some(order[i].id))? {
                order.push(self.snapshot(c)?);
            }
            i += 1;
        }
        let mut keep: HashSet<SnapshotId> = HashSet::new();
        for s in order.iter().rev() {
            if in_use.contains_key(&s.id) || keep.contains(&s.id) {
                keep.insert(s.id);
                if let Some(p) = s.parent {
                    keep.insert(p);
                }
            }
        }
        let mut batch = Batch::new();
        let mut removed = Vec::new();
        for s in &order {
            if !keep.contains(&s.id) {
                snapshot::stage_remove(&mut batch, s);
                removed.push(s.id);
            }
        }
        if removed.is_empty() {
            return Err(Error::InUse {
                id,
                why: "every snapshot in it has a workspace standing on it or below it".into(),
            });
        }
        self.backend().write(batch, Durability::Sync)?;
        let bytes: u64 = order
            .iter()
            .filter(|s| !keep.contains(&s.id))
            .map(|s| s.bytes)
            .sum();
        self.shared
            .count_snapshots(-(removed.len() as i64), -(bytes as i64));
        Ok(removed)
    }

    /// Commits `edits`, applied over the tree of snapshot `over` (the empty tree for
    /// `None`), as a new child of `parent`: the commit path of an engine that learns its
    /// changes by path (an overlay upperdir holds every change since its lower layer,
    /// `over`, which need not be the workspace's last snapshot). Only directories on
    /// edited paths are loaded. With `workspace`, that workspace (which must stand on
    /// `parent`) moves onto the new snapshot in the same batch.
    pub fn commit_edits(
        &self,
        over: Option<SnapshotId>,
        parent: Option<SnapshotId>,
        edits: &Edits,
        label: Option<String>,
        annotations: serde_json::Map<String, serde_json::Value>,
        workspace: Option<WorkspaceId>,
    ) -> Result<Snapshot> {
        let req = crate::SnapshotRequest {
            label,
            annotations,
            ..Default::default()
        };
        self.commit_edits_with(over, parent, edits, req, workspace)
    }

    /// `commit_edits` with every choice of the request (durability among them).
    pub fn commit_edits_with(
        &self,
        over: Option<SnapshotId>,
        parent: Option<SnapshotId>,
        edits: &Edits,
        req: crate::SnapshotRequest,
        workspace: Option<WorkspaceId>,
    ) -> Result<Snapshot> {
        let start = std::time::Instant::now();
        let _gc = self.shared.gc_lock.read();
        if let Some(p) = parent {
            self.snapshot(p)?;
        }
        let base = self.tree_of(over)?;
        let moves = match workspace {
            Some(id) => {
                let rec = self.workspace_record(id)?;
                if rec.base != parent {
                    return Err(Error::InvalidArgument(format!(
                        "workspace {id} stands on {:?}, not on the edits' parent {parent:?}",
                        rec.base
                    )));
                }
                Some(rec)
            }
            None => None,
        };
        let mut source = EditSource {
            shared: &self.shared,
            base,
            edits,
            moves,
        };
        let landing = Landing::snapshot(parent, None, req, start);
        let w = self.shared.store.writer();
        commit::land(&self.shared, &mut source, w, landing)?.into_snapshot()
    }

    // ---- workspaces ----

    /// A new workspace over snapshot `from` (or empty). O(1) in the snapshot's size.
    pub fn create_workspace(
        &self,
        from: Option<SnapshotId>,
        read_only: bool,
        props: serde_json::Value,
    ) -> Result<Arc<Workspace>> {
        self.create_workspace_with(from, read_only, props, None)
    }

    /// `create_workspace` with a quota (measured at once: O(1) with the snapshot's name
    /// count memoized, else a walk of its directories not counted before).
    pub fn create_workspace_with(
        &self,
        from: Option<SnapshotId>,
        read_only: bool,
        props: serde_json::Value,
        quota: Option<crate::workspace::Quota>,
    ) -> Result<Arc<Workspace>> {
        let start = self.tree_of(from)?;
        let id = self.shared.alloc_workspace_id();
        let rec = WorkspaceRecord {
            id,
            base: from,
            base_root: start.fp,
            head: None,
            read_only,
            lower: None,
            props,
            quota: quota.filter(|q| !q.is_unlimited()),
        };
        let ws = Arc::new(Workspace::from_record(self.shared.clone(), &rec, start)?);
        let mut b = Batch::new();
        b.put(Cf::Workspaces, id.key(), snapshot::encode_record(&rec));
        self.shared.stage_counters(&mut b);
        self.backend().write(b, Durability::Sync)?;
        self.open.lock().insert(id, Arc::downgrade(&ws));
        Ok(ws)
    }

    /// Opens a persisted workspace, with the uncommitted changes it was closed with.
    /// Returns the already-open instance if there is one.
    pub fn open_workspace(&self, id: WorkspaceId) -> Result<Arc<Workspace>> {
        let mut open = self.open.lock();
        if let Some(ws) = open.get(&id).and_then(Weak::upgrade) {
            return Ok(ws);
        }
        let rec = self.workspace_record(id)?;
        let start = match (rec.head, rec.base) {
            (Some(head), _) => head,
            (None, base) => self.tree_of(base)?,
        };
        let ws = Arc::new(Workspace::from_record(self.shared.clone(), &rec, start)?);
        open.insert(id, Arc::downgrade(&ws));
        Ok(ws)
    }

    /// A read-only view of snapshot `id` (or the empty tree) served like a workspace but
    /// never persisted: it has no record, is not listed, and leaves nothing behind. O(1)
    /// in the snapshot's size (directories load on first lookup). The overlay engine's
    /// lower layers are views.
    pub fn view(&self, id: Option<SnapshotId>) -> Result<Arc<Workspace>> {
        let start = self.tree_of(id)?;
        // Views take ids from the top half, so that they never use up (or collide with)
        // the ids of persisted workspaces, and no journal record ever names one.
        static NEXT_VIEW: AtomicU64 = AtomicU64::new(1 << 63);
        let rec = WorkspaceRecord {
            id: WorkspaceId(NEXT_VIEW.fetch_add(1, Ordering::Relaxed)),
            base: id,
            base_root: start.fp,
            head: None,
            read_only: true,
            lower: None,
            props: serde_json::Value::Null,
            quota: None,
        };
        Ok(Arc::new(Workspace::from_record(
            self.shared.clone(),
            &rec,
            start,
        )?))
    }

    /// Moves a workspace onto snapshot `base` with no uncommitted changes and, for an
    /// overlay workspace, a lower layer showing `lower` (one synced write). What an engine
    /// that keeps a workspace's files itself records after a checkout.
    pub fn rebase_workspace(
        &self,
        id: WorkspaceId,
        base: Option<SnapshotId>,
        lower: Option<SnapshotId>,
    ) -> Result<WorkspaceRecord> {
        let _gc = self.shared.gc_lock.read();
        let rec = self.workspace_record(id)?;
        let tree = self.tree_of(base)?;
        if let Some(l) = lower {
            self.snapshot(l)?;
        }
        let rec = WorkspaceRecord {
            base,
            base_root: tree.fp,
            head: None,
            lower,
            ..rec
        };
        let mut b = Batch::new();
        b.put(Cf::Workspaces, id.key(), snapshot::encode_record(&rec));
        self.backend().write(b, Durability::Sync)?;
        Ok(rec)
    }

    /// The entry at `path` (`/`-separated, relative to the root) in snapshot `id`, or
    /// `None` when nothing is there. Loads only the directories on the path.
    pub fn entry_at(&self, id: SnapshotId, path: &str) -> Result<Option<tree::EntryKind>> {
        crate::edits::entry_at(&self.shared, self.snapshot(id)?.tree, path)
    }

    /// The attributes of the root directory of snapshot `id` (the empty tree's for
    /// `None`).
    pub fn root_attrs(&self, id: Option<SnapshotId>) -> Result<tree::Attrs> {
        let t = self.tree_of(id)?;
        Ok(self.shared.node(&t.node)?.attrs.clone())
    }

    /// Where a workspace keeps its files (own copies; an overlay workspace's layers).
    pub fn workspace_dir(&self, id: WorkspaceId) -> PathBuf {
        self.shared.workspace_dir(id)
    }

    /// The persisted record of a workspace.
    pub fn workspace_record(&self, id: WorkspaceId) -> Result<WorkspaceRecord> {
        let v = self
            .backend()
            .get(Cf::Workspaces, &id.key())?
            .ok_or(Error::WorkspaceNotFound(id))?;
        snapshot::decode_record(&format!("workspaces/{id}"), &v)
    }

    /// Every persisted workspace record.
    pub fn workspaces(&self) -> Result<Vec<WorkspaceRecord>> {
        let mut out = Vec::new();
        self.backend().scan(Cf::Workspaces, &[], &mut |k, v| {
            let id = WorkspaceId::from_key(k).map_or_else(|| format!("{k:?}"), |i| i.to_string());
            out.push(snapshot::decode_record(&format!("workspaces/{id}"), v)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// A record another program keeps in this store under `namespace` (the containerd
    /// snapshotter's keys: `ext/<namespace>/<key>` in the meta column family).
    pub fn ext_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>> {
        self.backend().get(Cf::Meta, &ext_key(namespace, key))
    }

    /// Puts (`Some`) or deletes (`None`) records of `namespace`, all in one synced write.
    pub fn ext_write(&self, namespace: &str, records: &[(&str, Option<&[u8]>)]) -> Result<()> {
        let mut b = Batch::new();
        for (key, value) in records {
            match value {
                Some(v) => b.put(Cf::Meta, ext_key(namespace, key), v.to_vec()),
                None => b.delete(Cf::Meta, ext_key(namespace, key)),
            }
        }
        self.backend().write(b, Durability::Sync)
    }

    /// Every record of `namespace`, by key.
    pub fn ext_list(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = ext_key(namespace, "");
        let mut out = Vec::new();
        self.backend().scan(Cf::Meta, &prefix, &mut |k, v| {
            out.push((
                String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                v.to_vec(),
            ));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Deletes a workspace, its record and its files. Its uncommitted changes are lost.
    pub fn delete_workspace(&self, id: WorkspaceId) -> Result<()> {
        self.workspace_record(id)?;
        self.open.lock().remove(&id);
        let mut b = Batch::new();
        b.delete(Cf::Workspaces, id.key());
        crate::journal::stage_clear_all(self.backend(), id, &mut b)?;
        self.backend().write(b, Durability::Sync)?;
        let dir = self.shared.workspace_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("remove {}", dir.display()), e))?;
        }
        Ok(())
    }

    /// Saves every open workspace's uncommitted changes and flushes the store.
    pub fn close(&self) -> Result<()> {
        let open: Vec<Arc<Workspace>> = self
            .open
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for ws in open {
            ws.save()?;
        }
        self.backend().flush()
    }

    /// The tree of snapshot `id`, or the empty tree for `None`.
    fn tree_of(&self, id: Option<SnapshotId>) -> Result<TreeRef> {
        match id {
            Some(id) => Ok(self.snapshot(id)?.tree_ref()),
            None => self.empty_tree(),
        }
    }

    /// The canonical empty root directory (mode 0755, owned by root), stored.
    pub fn empty_tree(&self) -> Result<TreeRef> {
        let node = empty_node();
        let mut w = self.shared.store.writer();
        let tref = node.store(&mut w)?;
        w.commit(Batch::new())?;
        Ok(tref)
    }

    // ---- statistics ----

    /// Store and graph counters.
    pub fn stats(&self) -> Result<Stats> {
        let store = self.shared.store.stats();
        let logical = self.shared.logical_bytes.load(Ordering::Relaxed);
        let snapshots = self.shared.snapshot_count.load(Ordering::Relaxed);
        let mut workspaces = 0u64;
        self.backend().scan(Cf::Workspaces, &[], &mut |_, _| {
            workspaces += 1;
            Ok(true)
        })?;
        Ok(Stats {
            objects: store.objects,
            stored_bytes: store.stored_bytes,
            logical_bytes: logical,
            dedup_ratio: if store.stored_bytes == 0 {
                1.0
            } else {
                logical as f64 / store.stored_bytes as f64
            },
            snapshots,
            workspaces,
            cache_hits: store.cache_hits,
            cache_misses: store.cache_misses,
        })
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        self.shared.store.backend().as_ref()
    }
}

pub(crate) fn empty_node() -> DirNode {
    DirNode {
        attrs: tree::Attrs {
            mode: 0o755,
            ..Default::default()
        },
        entries: Vec::new(),
    }
}

/// The meta key of record `key` of `namespace` (see `Repo::ext_get`).
fn ext_key(namespace: &str, key: &str) -> Vec<u8> {
    format!("ext/{namespace}/{key}").into_bytes()
}
