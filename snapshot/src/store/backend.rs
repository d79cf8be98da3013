//! The storage backend trait and its in-memory and fault-injecting twins.
//!
//! A backend is a handful of ordered key-value maps (column families) with atomic
//! multi-key writes. RocksDB is the production backend (`rocks.rs`); `MemBackend`
//! serves tests and keeps the durability contract (it loses unsynced writes on a
//! simulated power cut); `FaultyBackend` wraps it to fail, fail once and recover, or
//! "crash" after N writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::error::{Error, Result};

/// The column families. Layouts are specified in `docs/format.md`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Cf {
    /// Content-addressed objects: hash -> codec tag + payload.
    Objects,
    /// Format version and id counters.
    Meta,
    /// Snapshot records: id (u64 BE) -> record.
    Snapshots,
    /// Secondary indexes: children by parent, snapshots by root.
    Index,
    /// Workspace records: id (u64 BE) -> record.
    Workspaces,
    /// Workspace journals: workspace id (u64 BE) + inode (u64 BE) -> record.
    Journal,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 6] = [
        Cf::Objects,
        Cf::Meta,
        Cf::Snapshots,
        Cf::Index,
        Cf::Workspaces,
        Cf::Journal,
    ];

    /// The RocksDB column family name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Objects => "objects",
            Cf::Meta => "meta",
            Cf::Snapshots => "snapshots",
            Cf::Index => "index",
            Cf::Workspaces => "workspaces",
            Cf::Journal => "journal",
        }
    }
}

/// One write in a batch.
#[derive(Clone, Debug)]
pub enum Op {
    /// Set `key` to `value`.
    Put(Cf, Vec<u8>, Vec<u8>),
    /// Remove `key`.
    Delete(Cf, Vec<u8>),
    /// Add `value`, a run of big-endian 64-bit integers (two's complement), to the
    /// run stored at `key` (missing counts as zeros), element by element: counters that
    /// concurrent batches update without reading them first, in any order.
    Add(Cf, Vec<u8>, Vec<u8>),
}

/// `Op::Add`'s arithmetic: `base` plus `delta`, element-wise on big-endian 64-bit
/// integers; the result has the longer length.
pub fn add_counters(base: Option<&[u8]>, delta: &[u8]) -> Vec<u8> {
    let base = base.unwrap_or_default();
    let n = base.len().max(delta.len()) / 8;
    let word = |b: &[u8], i: usize| -> u64 {
        b.get(i * 8..i * 8 + 8)
            .and_then(|w| w.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    (0..n)
        .flat_map(|i| word(base, i).wrapping_add(word(delta, i)).to_be_bytes())
        .collect()
}

/// Writes applied atomically: all or none.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub(crate) ops: Vec<Op>,
    bytes: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let (key, value) = (key.into(), value.into());
        self.bytes += key.len() + value.len();
        self.ops.push(Op::Put(cf, key, value));
    }

    /// Adds `deltas` to the counters at `key` (see `Op::Add`).
    pub fn add(&mut self, cf: Cf, key: impl Into<Vec<u8>>, deltas: &[i64]) {
        let key = key.into();
        let value: Vec<u8> = deltas.iter().flat_map(|d| d.to_be_bytes()).collect();
        self.bytes += key.len() + value.len();
        self.ops.push(Op::Add(cf, key, value));
    }

    /// Adds a delete.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        let key = key.into();
        self.bytes += key.len();
        self.ops.push(Op::Delete(cf, key));
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Approximate payload size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The visitor of `Backend::scan`: called with each key and value; `Ok(false)` stops.
pub type ScanFn<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// Whether a write must be on stable storage before it returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Durability {
    /// Synced (fsync of the write-ahead log) before returning.
    #[default]
    Sync,
    /// Buffered; made durable by a later synced write or a flush.
    Buffered,
}

/// Ordered key-value storage with atomic batches.
pub trait Backend: Send + Sync + 'static {
    /// The value at `key`.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Applies every op of `batch` atomically.
    fn write(&self, batch: Batch, durability: Durability) -> Result<()>;

    /// Calls `f(key, value)` for every key starting with `prefix`, in key order, until `f`
    /// returns `Ok(false)`.
    fn scan(&self, cf: Cf, prefix: &[u8], f: &mut ScanFn<'_>) -> Result<()>;

    /// Makes every buffered write durable.
    fn flush(&self) -> Result<()>;

    /// True when `key` is present. Backends with bloom filters override this.
    fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool> {
        Ok(self.get(cf, key)?.is_some())
    }

    /// Reclaims the space of overwritten and deleted values of `cf` (RocksDB keeps old
    /// versions until a compaction); nothing for backends without them.
    fn compact(&self, _cf: Cf) -> Result<()> {
        Ok(())
    }

    /// What the backend holds in memory, by part, in bytes (for `/metrics`); nothing for
    /// backends that do not say.
    fn memory(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

type Maps = BTreeMap<Cf, BTreeMap<Vec<u8>, Vec<u8>>>;

fn apply(maps: &mut Maps, ops: impl IntoIterator<Item = Op>) {
    for op in ops {
        match op {
            Op::Put(cf, k, v) => {
                maps.entry(cf).or_default().insert(k, v);
            }
            Op::Delete(cf, k) => {
                maps.entry(cf).or_default().remove(&k);
            }
            Op::Add(cf, k, delta) => {
                let m = maps.entry(cf).or_default();
                let v = add_counters(m.get(&k).map(Vec::as_slice), &delta);
                m.insert(k, v);
            }
        }
    }
}

#[derive(Default)]
struct MemState {
    /// What reads see: every write that returned.
    live: Maps,
    /// What survives a power cut: the writes up to the last synced one.
    durable: Maps,
    /// Writes since the last sync, oldest first (a write-ahead log not yet synced).
    unsynced: Vec<Op>,
}

/// A backend in memory that keeps the durability contract of a real one: buffered writes
/// are visible at once but reach stable storage only with the next synced write or
/// flush, as RocksDB's WAL does. `power_cut` drops what was not synced. Clones share the
/// same state, so a test can "reopen" a store after a simulated crash.
#[derive(Clone, Default)]
pub struct MemBackend {
    state: Arc<RwLock<MemState>>,
}

impl MemBackend {
    /// An empty backend.
    pub fn new() -> MemBackend {
        MemBackend::default()
    }

    /// Simulates losing power: every write not yet synced is gone. A killed process
    /// (SIGKILL) loses nothing that was written, so that needs no call at all.
    pub fn power_cut(&self) {
        let mut st = self.state.write();
        st.unsynced.clear();
        st.live = st.durable.clone();
    }

    /// Writes waiting for a sync (for tests of durability choices).
    pub fn unsynced_ops(&self) -> usize {
        self.state.read().unsynced.len()
    }

    /// Applies a batch to what reads see without making it (or anything before it)
    /// durable: a write whose sync failed.
    fn write_unsynced(&self, batch: Batch) {
        let mut st = self.state.write();
        apply(&mut st.live, batch.ops.iter().cloned());
        st.unsynced.extend(batch.ops);
    }

    fn sync(st: &mut MemState) {
        let ops = std::mem::take(&mut st.unsynced);
        apply(&mut st.durable, ops);
    }
}

impl Backend for MemBackend {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .state
            .read()
            .live
            .get(&cf)
            .and_then(|m| m.get(key).cloned()))
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        let mut st = self.state.write();
        apply(&mut st.live, batch.ops.iter().cloned());
        st.unsynced.extend(batch.ops);
        if durability == Durability::Sync {
            MemBackend::sync(&mut st);
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, prefix: &[u8], f: &mut ScanFn<'_>) -> Result<()> {
        // Copy the range out so `f` may write to the backend without deadlocking.
        let items: Vec<(Vec<u8>, Vec<u8>)> = match self.state.read().live.get(&cf) {
            Some(m) => m
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => return Ok(()),
        };
        for (k, v) in items {
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        MemBackend::sync(&mut self.state.write());
        Ok(())
    }
}

/// What a `FaultyBackend` does once its write budget is spent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// Every later write fails with an I/O error; reads keep working.
    FailWrites,
    /// The machine "crashed": later writes fail and never reach the inner backend, as if
    /// power was lost at that instant. Reopen the inner backend to see what survived.
    Crash,
    /// The next write fails with ENOSPC and changes nothing; later writes succeed again
    /// (a disk that filled up and was then freed).
    NoSpaceOnce,
    /// The next synced write reaches the inner backend but is not made durable, and
    /// reports an I/O error (a failed fsync); later writes succeed again. Only works over
    /// a `MemBackend`, which can tell written from durable.
    SyncFailsOnce,
}

/// Wraps a `MemBackend` and injects a fault after `budget` successful batch writes.
pub struct FaultyBackend {
    inner: MemBackend,
    budget: AtomicU64,
    fault: Fault,
    /// A one-time fault has fired; the backend works again.
    recovered: std::sync::atomic::AtomicBool,
    /// Writes seen (successful or not), for tests that sweep the crash point.
    pub writes: AtomicU64,
    /// Faults injected so far.
    pub injected: AtomicU64,
}

impl FaultyBackend {
    /// Lets `budget` batches through, then applies `fault`.
    pub fn new(inner: MemBackend, budget: u64, fault: Fault) -> FaultyBackend {
        FaultyBackend {
            inner,
            budget: AtomicU64::new(budget),
            fault,
            recovered: std::sync::atomic::AtomicBool::new(false),
            writes: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    fn take(&self) -> bool {
        self.recovered.load(Ordering::SeqCst)
            || self
                .budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                .is_ok()
    }

    fn crashed(&self) -> bool {
        self.fault == Fault::Crash && self.budget.load(Ordering::SeqCst) == 0
    }

    fn injected(&self) -> Error {
        self.injected.fetch_add(1, Ordering::SeqCst);
        match self.fault {
            Fault::FailWrites => Error::io(
                "backend write",
                std::io::Error::other("injected write failure"),
            ),
            Fault::Crash => Error::io("backend write", std::io::Error::other("injected crash")),
            Fault::NoSpaceOnce => Error::io(
                "the store's disk is full (injected)",
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ),
            Fault::SyncFailsOnce => Error::io(
                "sync of the store's log (injected)",
                std::io::Error::from_raw_os_error(libc::EIO),
            ),
        }
    }
}

impl Backend for FaultyBackend {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.take() {
            return self.inner.write(batch, durability);
        }
        match self.fault {
            Fault::FailWrites | Fault::Crash => Err(self.injected()),
            Fault::NoSpaceOnce => {
                self.recovered.store(true, Ordering::SeqCst);
                Err(self.injected())
            }
            Fault::SyncFailsOnce if durability == Durability::Buffered => {
                // Only a sync can fail this way; keep the fault for the next one.
                self.budget.store(0, Ordering::SeqCst);
                self.inner.write(batch, durability)
            }
            Fault::SyncFailsOnce => {
                self.recovered.store(true, Ordering::SeqCst);
                self.inner.write_unsynced(batch);
                Err(self.injected())
            }
        }
    }

    fn scan(&self, cf: Cf, prefix: &[u8], f: &mut ScanFn<'_>) -> Result<()> {
        self.inner.scan(cf, prefix, f)
    }

    fn flush(&self) -> Result<()> {
        if self.crashed() {
            return Err(self.injected());
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_scan_respects_prefix_and_order() {
        let b = MemBackend::new();
        let mut batch = Batch::new();
        batch.put(Cf::Index, b"b2".to_vec(), b"".to_vec());
        batch.put(Cf::Index, b"a1".to_vec(), b"".to_vec());
        batch.put(Cf::Index, b"b1".to_vec(), b"".to_vec());
        b.write(batch, Durability::Sync).expect("write");
        let mut seen = Vec::new();
        b.scan(Cf::Index, b"b", &mut |k, _| {
            seen.push(k.to_vec());
            Ok(true)
        })
        .expect("scan");
        assert_eq!(seen, vec![b"b1".to_vec(), b"b2".to_vec()]);
    }

    #[test]
    fn faulty_fails_after_budget() {
        let b = FaultyBackend::new(MemBackend::new(), 1, Fault::FailWrites);
        let mut batch = Batch::new();
        batch.put(Cf::Meta, b"k".to_vec(), b"v".to_vec());
        b.write(batch.clone(), Durability::Sync)
            .expect("first write passes");
        assert!(b.write(batch.clone(), Durability::Sync).is_err());
        assert!(b.write(batch, Durability::Sync).is_err(), "stays failed");
    }

    fn put(k: &[u8]) -> Batch {
        let mut batch = Batch::new();
        batch.put(Cf::Meta, k.to_vec(), b"v".to_vec());
        batch
    }

    #[test]
    fn mem_power_cut_drops_only_unsynced_writes() {
        let b = MemBackend::new();
        b.write(put(b"a"), Durability::Sync).expect("write");
        b.write(put(b"b"), Durability::Buffered).expect("write");
        assert!(
            b.get(Cf::Meta, b"b").expect("get").is_some(),
            "visible at once"
        );
        b.power_cut();
        assert!(b.get(Cf::Meta, b"a").expect("get").is_some());
        assert!(
            b.get(Cf::Meta, b"b").expect("get").is_none(),
            "never synced"
        );
        // A synced write makes everything before it durable, as a WAL sync does.
        b.write(put(b"c"), Durability::Buffered).expect("write");
        b.write(put(b"d"), Durability::Sync).expect("write");
        b.power_cut();
        assert!(b.get(Cf::Meta, b"c").expect("get").is_some());
        assert!(b.get(Cf::Meta, b"d").expect("get").is_some());
    }

    #[test]
    fn faulty_no_space_once_fails_one_write_then_recovers() {
        let inner = MemBackend::new();
        let b = FaultyBackend::new(inner.clone(), 1, Fault::NoSpaceOnce);
        b.write(put(b"a"), Durability::Sync).expect("within budget");
        let e = b
            .write(put(b"b"), Durability::Sync)
            .expect_err("fails once");
        assert!(e.to_string().contains("full"), "{e}");
        assert!(
            inner.get(Cf::Meta, b"b").expect("get").is_none(),
            "nothing applied"
        );
        b.write(put(b"c"), Durability::Sync).expect("recovered");
        b.write(put(b"d"), Durability::Sync)
            .expect("still recovered");
    }

    #[test]
    fn faulty_sync_fails_once_leaves_the_write_visible_but_not_durable() {
        let inner = MemBackend::new();
        let b = FaultyBackend::new(inner.clone(), 0, Fault::SyncFailsOnce);
        b.write(put(b"a"), Durability::Buffered)
            .expect("buffered passes");
        b.write(put(b"b"), Durability::Sync)
            .expect_err("sync fails");
        assert!(inner.get(Cf::Meta, b"b").expect("get").is_some());
        inner.power_cut();
        assert!(inner.get(Cf::Meta, b"b").expect("get").is_none());
        b.write(put(b"c"), Durability::Sync).expect("recovered");
    }
}
