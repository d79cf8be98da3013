//! The content-addressed store: objects keyed by BLAKE3 hash, codec-tagged, in a
//! `Backend`, with a byte-bounded cache in front. Every read verifies the hash.

pub mod backend;
pub(crate) mod codec;
pub mod rocks;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use quick_cache::Weighter;

use crate::error::{Error, Result};
use crate::hash::Hash;
pub use backend::{Backend, Batch, Cf, Durability, Fault, FaultyBackend, MemBackend};

/// The on-disk format this build reads and writes (`docs/format.md`). Version 2 added
/// the zstd and delta codecs that packing writes; a version 1 store is upgraded when
/// opened (its values are all valid in version 2), so that an older build refuses it
/// by its version instead of failing on values it cannot decode.
pub const FORMAT_VERSION: u32 = 2;
/// Meta key holding the format version (u32 BE).
pub(crate) const META_FORMAT: &[u8] = b"format_version";
/// Meta key holding the object counters (`objects`, `stored_bytes`, each u64 BE).
pub(crate) const META_OBJECT_STATS: &[u8] = b"object_stats";

/// The longest chain of deltas a read follows (packing builds chains of at most
/// `pack::DELTA_DEPTH`); a longer one is reported as corrupt.
const MAX_CHAIN: u32 = 64;

/// Staged objects are written out once they exceed this many bytes, so that a large
/// commit never holds more than this in memory.
pub(crate) const STAGE_LIMIT: usize = 32 << 20;

#[derive(Clone)]
struct ByteWeight;

impl Weighter<Hash, Arc<[u8]>> for ByteWeight {
    fn weight(&self, _: &Hash, v: &Arc<[u8]>) -> u64 {
        // Count a fixed overhead so that many tiny objects still bound the cache.
        v.len() as u64 + 64
    }
}

thread_local! {
    /// This thread reads without filling the cache (`Store::without_filling`).
    static NO_FILL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Restores the thread's cache filling when dropped.
pub(crate) struct NoFill(bool);

impl Drop for NoFill {
    fn drop(&mut self) {
        NO_FILL.set(self.0);
    }
}

/// Counters of the store, for `/v1/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Objects in the store.
    pub objects: u64,
    /// Bytes of encoded object values (after lz4).
    pub stored_bytes: u64,
    /// Cache hits since open.
    pub cache_hits: u64,
    /// Cache misses since open.
    pub cache_misses: u64,
    /// Bytes held by the object cache.
    pub cache_bytes: u64,
}

/// The content-addressed object store.
pub struct Store {
    backend: Arc<dyn Backend>,
    cache: quick_cache::sync::Cache<Hash, Arc<[u8]>, ByteWeight>,
    hits: AtomicU64,
    misses: AtomicU64,
    objects: AtomicU64,
    stored_bytes: AtomicU64,
    /// Serializes writes that update the persisted object counters.
    counter_lock: Mutex<()>,
}

impl Store {
    /// Opens a store over `backend`, writing the format version into an empty one and
    /// refusing one written by another version.
    pub fn open(backend: Arc<dyn Backend>, cache_bytes: u64) -> Result<Store> {
        match backend.get(Cf::Meta, META_FORMAT)? {
            Some(v) => {
                let found = u32::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                    Error::CorruptRecord {
                        key: "meta/format_version".into(),
                        reason: format!("{} bytes, expected 4", v.len()),
                    }
                })?);
                if found == 1 {
                    let mut b = Batch::new();
                    b.put(Cf::Meta, META_FORMAT, FORMAT_VERSION.to_be_bytes());
                    backend.write(b, Durability::Sync)?;
                } else if found != FORMAT_VERSION {
                    return Err(Error::FormatVersion {
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
            }
            None => {
                let mut b = Batch::new();
                b.put(Cf::Meta, META_FORMAT, FORMAT_VERSION.to_be_bytes());
                backend.write(b, Durability::Sync)?;
            }
        }
        let (objects, stored_bytes) = match backend.get(Cf::Meta, META_OBJECT_STATS)? {
            Some(v) if v.len() == 16 => (be_u64(&v[..8]), be_u64(&v[8..])),
            _ => (0, 0),
        };
        let cache_bytes = cache_bytes.max(1 << 20);
        Ok(Store {
            backend,
            cache: quick_cache::sync::Cache::with_weighter(
                (cache_bytes / 4096).max(64) as usize,
                cache_bytes,
                ByteWeight,
            ),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            objects: AtomicU64::new(objects),
            stored_bytes: AtomicU64::new(stored_bytes),
            counter_lock: Mutex::new(()),
        })
    }

    /// The backend, for records that live beside the objects.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Reads and verifies an object.
    pub fn get(&self, hash: &Hash) -> Result<Arc<[u8]>> {
        self.get_at(hash, 0)
    }

    /// `get` of an object `depth` deltas below the one asked for.
    fn get_at(&self, hash: &Hash, depth: u32) -> Result<Arc<[u8]>> {
        if let Some(v) = self.cache.get(hash) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(v);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let value = self
            .backend
            .get(Cf::Objects, hash.as_bytes())?
            .ok_or(Error::MissingObject(*hash))?;
        let bytes: Arc<[u8]> = self.decode_at(hash, &value, depth)?.into();
        if !NO_FILL.get() {
            self.cache.insert(*hash, bytes.clone());
        }
        Ok(bytes)
    }

    /// Until the guard is dropped, this thread's reads use the cache but do not fill it:
    /// for a pass over cold data (the packer reads every object of every new snapshot)
    /// that would otherwise evict what the workspaces use, and grow the cache's tables
    /// with many small entries the process then keeps.
    pub(crate) fn without_filling(&self) -> NoFill {
        NoFill(NO_FILL.replace(true))
    }

    /// Decodes and verifies a stored value of `hash`, reading a delta's base through
    /// the cache.
    pub(crate) fn decode_value(&self, hash: &Hash, value: &[u8]) -> Result<Vec<u8>> {
        self.decode_at(hash, value, 0)
    }

    fn decode_at(&self, hash: &Hash, value: &[u8], depth: u32) -> Result<Vec<u8>> {
        codec::decode_with(hash, value, &mut |base| {
            if depth >= MAX_CHAIN {
                return Err(Error::Corrupt {
                    hash: *hash,
                    reason: format!("a chain of more than {MAX_CHAIN} deltas"),
                });
            }
            self.get_at(base, depth + 1)
        })
    }

    /// Reads and verifies an object without putting it in the cache (fsck, export of
    /// cold data); a delta's base is read through the cache.
    pub fn get_uncached(&self, hash: &Hash) -> Result<Vec<u8>> {
        let value = self
            .backend
            .get(Cf::Objects, hash.as_bytes())?
            .ok_or(Error::MissingObject(*hash))?;
        self.decode_value(hash, &value)
    }

    /// True when the object is stored. The cache holds only objects read from the
    /// backend or written by a batch that succeeded (`ObjectWriter` fills it after its
    /// write, never before), so an object a failed commit staged never counts as stored.
    pub fn contains(&self, hash: &Hash) -> Result<bool> {
        if self.cache.get(hash).is_some() {
            return Ok(true);
        }
        self.backend.contains(Cf::Objects, hash.as_bytes())
    }

    /// A writer that stages objects and writes them with `commit`.
    pub fn writer(&self) -> ObjectWriter<'_> {
        ObjectWriter {
            store: self,
            batch: Batch::new(),
            staged: HashSet::new(),
            to_cache: Vec::new(),
            new_objects: 0,
            new_bytes: 0,
            pending_objects: 0,
            pending_bytes: 0,
            spilled: false,
        }
    }

    /// Counters for `/v1/stats`.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            objects: self.objects.load(Ordering::Relaxed),
            stored_bytes: self.stored_bytes.load(Ordering::Relaxed),
            cache_hits: self.hits.load(Ordering::Relaxed),
            cache_misses: self.misses.load(Ordering::Relaxed),
            cache_bytes: self.cache.weight(),
        }
    }

    /// Writes `batch` and, atomically with it, adds the deltas to the object counters.
    pub(crate) fn write_counted(
        &self,
        mut batch: Batch,
        objects: i64,
        bytes: i64,
        durability: Durability,
    ) -> Result<()> {
        // A delta, not a value: concurrent commits reach the backend without a lock
        // (RocksDB groups their log syncs into one), in whatever order.
        if objects != 0 || bytes != 0 {
            batch.add(Cf::Meta, META_OBJECT_STATS, &[objects, bytes]);
        }
        self.backend.write(batch, durability)?;
        let _guard = self.counter_lock.lock();
        let add = |c: &AtomicU64, d: i64| {
            let v = (c.load(Ordering::Relaxed) as i64 + d).max(0) as u64;
            c.store(v, Ordering::Relaxed);
        };
        add(&self.objects, objects);
        add(&self.stored_bytes, bytes);
        Ok(())
    }

    /// Sets the object counters to exact values (after gc or fsck counted them).
    pub(crate) fn reset_counters(&self, objects: u64, bytes: u64) -> Result<()> {
        let _guard = self.counter_lock.lock();
        let mut v = objects.to_be_bytes().to_vec();
        v.extend_from_slice(&bytes.to_be_bytes());
        let mut batch = Batch::new();
        batch.put(Cf::Meta, META_OBJECT_STATS, v);
        self.backend.write(batch, Durability::Sync)?;
        self.objects.store(objects, Ordering::Relaxed);
        self.stored_bytes.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Drops an object from the cache (gc).
    pub(crate) fn evict(&self, hash: &Hash) {
        self.cache.remove(hash);
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Stages new objects and writes them, counting what was really new.
pub struct ObjectWriter<'a> {
    store: &'a Store,
    batch: Batch,
    staged: HashSet<Hash>,
    /// Small staged objects, to put in the cache once the write holding them succeeded.
    to_cache: Vec<(Hash, Arc<[u8]>)>,
    /// Objects that were not in the store before this writer.
    pub new_objects: u64,
    /// Encoded bytes of those objects.
    pub new_bytes: u64,
    pending_objects: u64,
    pending_bytes: u64,
    /// Some objects were written ahead, buffered.
    spilled: bool,
}

impl ObjectWriter<'_> {
    /// Stores `bytes` (if not already stored) and returns its hash.
    pub fn put(&mut self, bytes: &[u8]) -> Result<Hash> {
        self.put_hashed(Hash::of(bytes), bytes)
    }

    /// Like `put`, for a caller that has just computed `hash` of `bytes`.
    pub fn put_hashed(&mut self, hash: Hash, bytes: &[u8]) -> Result<Hash> {
        debug_assert_eq!(hash, Hash::of(bytes));
        if self.staged.contains(&hash) || self.store.contains(&hash)? {
            return Ok(hash);
        }
        let value = codec::encode(bytes);
        self.new_objects += 1;
        self.new_bytes += value.len() as u64;
        self.pending_objects += 1;
        self.pending_bytes += value.len() as u64;
        self.batch.put(Cf::Objects, hash.as_bytes().to_vec(), value);
        self.staged.insert(hash);
        if bytes.len() <= 256 << 10 {
            self.to_cache.push((hash, Arc::from(bytes)));
        }
        if self.batch.bytes() >= STAGE_LIMIT {
            self.spill()?;
        }
        Ok(hash)
    }

    /// Writes staged objects now (buffered); a later synced write makes them durable.
    fn spill(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        self.store.write_counted(
            batch,
            self.pending_objects as i64,
            self.pending_bytes as i64,
            Durability::Buffered,
        )?;
        self.pending_objects = 0;
        self.pending_bytes = 0;
        self.spilled = true;
        self.fill_cache();
        Ok(())
    }

    /// Caches what a successful write stored.
    fn fill_cache(&mut self) {
        for (hash, bytes) in self.to_cache.drain(..) {
            self.store.cache.insert(hash, bytes);
        }
    }

    /// Writes every staged object together with `extra` ops, atomically, synced.
    pub fn commit(self, extra: Batch) -> Result<(u64, u64)> {
        self.commit_with(extra, Durability::Sync)
    }

    /// Like `commit` with a chosen durability.
    pub fn commit_with(mut self, extra: Batch, durability: Durability) -> Result<(u64, u64)> {
        let mut batch = std::mem::take(&mut self.batch);
        batch.ops.extend(extra.ops);
        if batch.is_empty() {
            // Nothing new (everything deduplicated): no write; a sync only for what
            // earlier spills left buffered.
            if self.spilled && durability == Durability::Sync {
                self.store.backend.flush()?;
            }
            return Ok((self.new_objects, self.new_bytes));
        }
        self.store.write_counted(
            batch,
            self.pending_objects as i64,
            self.pending_bytes as i64,
            durability,
        )?;
        self.fill_cache();
        Ok((self.new_objects, self.new_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem_store() -> Store {
        Store::open(Arc::new(MemBackend::new()), 1 << 20).expect("open")
    }

    #[test]
    fn put_get_round_trip_and_dedup() {
        let store = mem_store();
        let mut w = store.writer();
        let a = w.put(b"hello").expect("put");
        let b = w.put(b"hello").expect("put");
        assert_eq!(a, b);
        assert_eq!(w.commit(Batch::new()).expect("commit"), (1, 6));
        assert_eq!(&*store.get(&a).expect("get"), b"hello");
        assert_eq!(store.stats().objects, 1);
        let mut w = store.writer();
        w.put(b"hello").expect("put");
        assert_eq!(w.commit(Batch::new()).expect("commit"), (0, 0));
    }

    #[test]
    fn reads_without_filling_leave_the_cache_as_it_was() {
        let backend = MemBackend::new();
        let h = {
            let store = Store::open(Arc::new(backend.clone()), 1 << 20).expect("open");
            let mut w = store.writer();
            let h = w.put(b"cold object").expect("put");
            w.commit(Batch::new()).expect("commit");
            h
        };
        // A fresh store: nothing cached.
        let store = Store::open(Arc::new(backend), 1 << 20).expect("open");
        {
            let _cold = store.without_filling();
            assert_eq!(&*store.get(&h).expect("get"), b"cold object");
            assert_eq!(&*store.get(&h).expect("get"), b"cold object");
        }
        let s = store.stats();
        assert_eq!(
            (s.cache_hits, s.cache_misses),
            (0, 2),
            "not cached while cold"
        );
        store.get(&h).expect("get");
        store.get(&h).expect("get");
        let s = store.stats();
        assert_eq!(
            (s.cache_hits, s.cache_misses),
            (1, 3),
            "cached once the guard is gone"
        );
    }

    #[test]
    fn corrupt_value_is_reported_not_returned() {
        let backend = MemBackend::new();
        let store = Store::open(Arc::new(backend.clone()), 1 << 20).expect("open");
        let h = Hash::of(b"data");
        let mut b = Batch::new();
        b.put(
            Cf::Objects,
            h.as_bytes().to_vec(),
            vec![CODEC_RAW_FOR_TEST, b'd', b'a', b't', b'x'],
        );
        backend.write(b, Durability::Sync).expect("write");
        assert!(matches!(store.get(&h), Err(Error::Corrupt { hash, .. }) if hash == h));
        assert!(matches!(
            store.get(&Hash::of(b"nope")),
            Err(Error::MissingObject(_))
        ));
    }

    /// Issue 8: a commit that failed for space left its objects in the cache, and the
    /// retry deduplicated against them and committed a snapshot without its data.
    #[test]
    fn a_failed_commit_leaves_nothing_to_deduplicate_against() {
        let inner = MemBackend::new();
        // Budget 1: the format version passes, the first commit fails for space.
        let faulty = Arc::new(FaultyBackend::new(inner.clone(), 1, Fault::NoSpaceOnce));
        let store = Store::open(faulty, 1 << 20).expect("open");
        let mut w = store.writer();
        let h = w.put(b"precious").expect("put");
        assert!(w.commit(Batch::new()).is_err(), "the disk is full");
        assert!(!store.contains(&h).expect("contains"), "not stored");
        let mut w = store.writer();
        w.put(b"precious").expect("put");
        assert_eq!(
            w.commit(Batch::new()).expect("retry"),
            (1, 9),
            "written again"
        );
        // A cold reopen after a power cut finds it.
        inner.power_cut();
        let store = Store::open(Arc::new(inner), 1 << 20).expect("reopen");
        assert_eq!(&*store.get(&h).expect("get"), b"precious");
    }

    const CODEC_RAW_FOR_TEST: u8 = codec::CODEC_RAW;

    #[test]
    fn a_version_1_store_is_upgraded_when_opened() {
        let backend = MemBackend::new();
        let mut b = Batch::new();
        b.put(Cf::Meta, META_FORMAT, 1u32.to_be_bytes());
        backend.write(b, Durability::Sync).expect("write");
        Store::open(Arc::new(backend.clone()), 1 << 20).expect("opens");
        assert_eq!(
            backend.get(Cf::Meta, META_FORMAT).expect("get"),
            Some(FORMAT_VERSION.to_be_bytes().to_vec())
        );
    }

    #[test]
    fn refuses_other_format_version() {
        let backend = MemBackend::new();
        let mut b = Batch::new();
        b.put(Cf::Meta, META_FORMAT, 99u32.to_be_bytes());
        backend.write(b, Durability::Sync).expect("write");
        assert!(matches!(
            Store::open(Arc::new(backend), 1 << 20),
            Err(Error::FormatVersion { found: 99, .. })
        ));
    }
}
