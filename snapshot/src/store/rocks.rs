//! The RocksDB backend: one column family per `Cf`, synced writes for durability.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, Direction,
    IteratorMode, Options, WriteBatch, WriteOptions,
};

use super::backend::{Backend, Batch, Cf, Durability, Op, ScanFn};
use crate::error::{Error, Result};

/// The largest write-ahead log before the memtables it covers are flushed.
const WAL_CAP: u64 = 4 << 20;

/// RocksDB behind the `Backend` trait. RocksDB's own LOCK file keeps a second process
/// from opening the same directory.
pub struct RocksBackend {
    db: DB,
    path: std::path::PathBuf,
}

fn db_err(e: rocksdb::Error) -> Error {
    let msg = e.into_string();
    if msg.contains("No space left on device") {
        return Error::io(
            "the store's disk is full",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
    }
    Error::Db(msg)
}

/// Space kept free on the store's filesystem: writes that would eat into it are refused
/// with ENOSPC before they reach RocksDB, which stops accepting writes (until reopened)
/// once one of its own writes or flushes fails for lack of space.
fn reserve(fs_bytes: u64) -> u64 {
    (fs_bytes / 50).clamp(16 << 20, 256 << 20)
}

impl RocksBackend {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<RocksBackend> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        // RocksDB preallocates each write-ahead log for a full memtable (~71 MiB with the
        // defaults), which a fresh state dir would pay at once (in RAM on tmpfs). Capping
        // the log caps the preallocation; a log past the cap flushes the oldest memtables.
        opts.set_max_total_wal_size(WAL_CAP);
        // The manifest is preallocated too (4 MiB by default); it holds a few KiB.
        opts.set_manifest_preallocation_size(64 << 10);
        let cache = Cache::new_lru_cache(64 << 20);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            // Objects carry their own lz4 codec tag; compressing again costs CPU for nothing.
            o.set_compression_type(DBCompressionType::None);
            let mut block = BlockBasedOptions::default();
            block.set_block_cache(&cache);
            // Index and filter blocks in the (bounded) block cache too: outside it they
            // grow with the store (seen in a 600 s soak: RSS kept climbing after every
            // cache had filled).
            block.set_cache_index_and_filter_blocks(true);
            block.set_pin_l0_filter_and_index_blocks_in_cache(true);
            if *cf == Cf::Objects {
                block.set_bloom_filter(10.0, false);
                o.optimize_for_point_lookup(64);
            }
            o.set_block_based_table_factory(&block);
            // `Op::Add`: counters that concurrent commits update without a lock (the
            // lock around the synced write defeated RocksDB's group commit).
            o.set_merge_operator_associative("helios_add", add_merge);
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(db_err)?;
        Ok(RocksBackend {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Refuses a write of `bytes` that would leave less than the reserve free.
    fn check_space(&self, bytes: usize) -> Result<()> {
        let Ok(st) = nix::sys::statvfs::statvfs(&self.path) else {
            return Ok(());
        };
        let frag = st.fragment_size();
        let free = st.blocks_available() * frag;
        let mut keep = reserve(st.blocks() * frag);
        if bytes < 4096 {
            // Records and counters (annotations, gc's counters) may use half the reserve.
            keep /= 2;
        }
        if free < keep + bytes as u64 * 2 {
            return Err(Error::io(
                format!(
                    "the store's disk is nearly full ({} MiB free, {} MiB kept in reserve)",
                    free >> 20,
                    keep >> 20
                ),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        Ok(())
    }

    fn cf(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| Error::Db(format!("column family {} is missing", cf.name())))
    }
}

/// The merge operator of `Op::Add` (associative: operands and values have one format).
fn add_merge(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let mut v = existing.map(<[u8]>::to_vec);
    for op in operands {
        v = Some(super::backend::add_counters(v.as_deref(), op));
    }
    Some(v.unwrap_or_default())
}

impl Backend for RocksBackend {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let handle = self.cf(cf)?;
        Ok(self
            .db
            .get_pinned_cf(handle, key)
            .map_err(db_err)?
            .map(|v| v.to_vec()))
    }

    fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool> {
        let handle = self.cf(cf)?;
        if !self.db.key_may_exist_cf(handle, key) {
            return Ok(false);
        }
        Ok(self
            .db
            .get_pinned_cf(handle, key)
            .map_err(db_err)?
            .is_some())
    }

    fn write(&self, batch: Batch, durability: Durability) -> Result<()> {
        // Deletes free space; everything else must leave the reserve.
        if batch
            .ops
            .iter()
            .any(|op| matches!(op, Op::Put(..) | Op::Add(..)))
        {
            self.check_space(batch.bytes())?;
        }
        let mut wb = WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.cf(cf)?, k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.cf(cf)?, k),
                Op::Add(cf, k, v) => wb.merge_cf(self.cf(cf)?, k, v),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(durability == Durability::Sync);
        self.db.write_opt(wb, &wo).map_err(db_err)
    }

    fn scan(&self, cf: Cf, prefix: &[u8], f: &mut ScanFn<'_>) -> Result<()> {
        let handle = self.cf(cf)?;
        let iter = self
            .db
            .iterator_cf(handle, IteratorMode::From(prefix, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(prefix) || !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(db_err)
    }

    fn compact(&self, cf: Cf) -> Result<()> {
        // Every family's memtable to its tables first, so that no log still holds
        // their writes and the logs go too.
        for other in Cf::ALL {
            self.db.flush_cf(self.cf(other)?).map_err(db_err)?;
        }
        self.db
            .compact_range_cf(self.cf(cf)?, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    fn memory(&self) -> Vec<(&'static str, u64)> {
        let prop = |cf: &rocksdb::ColumnFamily, name: &str| {
            self.db
                .property_int_value_cf(cf, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        let (mut memtables, mut readers, mut cache, mut pinned) = (0, 0, 0, 0);
        for cf in Cf::ALL {
            let Ok(h) = self.cf(cf) else { continue };
            memtables += prop(h, "rocksdb.cur-size-all-mem-tables");
            readers += prop(h, "rocksdb.estimate-table-readers-mem");
            // One block cache is shared by every column family: each reports all of it.
            cache = prop(h, "rocksdb.block-cache-usage");
            pinned = prop(h, "rocksdb.block-cache-pinned-usage");
        }
        vec![
            ("memtables", memtables),
            ("table_readers", readers),
            ("block_cache", cache),
            ("block_cache_pinned", pinned),
        ]
    }
}
