//! The storage backend trait and its in-memory and fault-injecting twins.
//!
//! A backend is a handful of ordered key-value maps (column families) with atomic
//! multi-key writes. RocksDB is the production backend (`rocks.rs`); `MemBackend`
//! serves unit tests; `FaultyBackend` wraps either to fail or "crash" after N writes.

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
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 5] = [
        Cf::Objects,
        Cf::Meta,
        Cf::Snapshots,
        Cf::Index,
        Cf::Workspaces,
    ];

    /// The RocksDB column family name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Objects => "objects",
            Cf::Meta => "meta",
            Cf::Snapshots => "snapshots",
            Cf::Index => "index",
            Cf::Workspaces => "workspaces",
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
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Durability {
    /// Synced (fsync of the write-ahead log) before returning.
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
}

type Maps = BTreeMap<Cf, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A backend in memory; clones share the same maps, so a test can "reopen" a store.
#[derive(Clone, Default)]
pub struct MemBackend {
    maps: Arc<RwLock<Maps>>,
}

impl MemBackend {
    /// An empty backend.
    pub fn new() -> MemBackend {
        MemBackend::default()
    }
}

impl Backend for MemBackend {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.maps.read().get(&cf).and_then(|m| m.get(key).cloned()))
    }

    fn write(&self, batch: Batch, _: Durability) -> Result<()> {
        let mut maps = self.maps.write();
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => {
                    maps.entry(cf).or_default().insert(k, v);
                }
                Op::Delete(cf, k) => {
                    maps.entry(cf).or_default().remove(&k);
                }
            }
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, prefix: &[u8], f: &mut ScanFn<'_>) -> Result<()> {
        // Copy the range out so `f` may write to the backend without deadlocking.
        let items: Vec<(Vec<u8>, Vec<u8>)> = match self.maps.read().get(&cf) {
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
}

/// Wraps a backend and injects a fault after `budget` successful batch writes.
pub struct FaultyBackend<B> {
    inner: B,
    budget: AtomicU64,
    fault: Fault,
    /// Writes seen (successful or not), for tests that sweep the crash point.
    pub writes: AtomicU64,
}

impl<B: Backend> FaultyBackend<B> {
    /// Lets `budget` batches through, then applies `fault` to every later write.
    pub fn new(inner: B, budget: u64, fault: Fault) -> FaultyBackend<B> {
        FaultyBackend {
            inner,
            budget: AtomicU64::new(budget),
            fault,
            writes: AtomicU64::new(0),
        }
    }

    fn take(&self) -> bool {
        self.budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_ok()
    }

    fn injected(&self) -> Error {
        let what = match self.fault {
            Fault::FailWrites => "injected write failure",
            Fault::Crash => "injected crash",
        };
        Error::io("backend write", std::io::Error::other(what))
    }
}

impl<B: Backend> Backend for FaultyBackend<B> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.take() {
            self.inner.write(batch, durability)
        } else {
            Err(self.injected())
        }
    }

    fn scan(&self, cf: Cf, prefix: &[u8], f: &mut ScanFn<'_>) -> Result<()> {
        self.inner.scan(cf, prefix, f)
    }

    fn flush(&self) -> Result<()> {
        if self.budget.load(Ordering::SeqCst) == 0 && self.fault == Fault::Crash {
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
        assert!(b.write(batch, Durability::Sync).is_err());
    }
}
