//! Packing: history stored at about what it changed, the way git packs do. A commit
//! writes whole objects (raw or lz4: cheap on the hot path); `Repo::pack`, run in the
//! background, walks each snapshot not yet packed against its parent and rewrites the
//! stored value of every object the snapshot introduced: as a zstd delta against its
//! predecessor at the same path (the file's previous content, the same page of the
//! directory's previous version, the chunk at the same position of a large file's
//! previous version) when that is smallest, else as zstd. Keys never change: an
//! object's hash names its bytes whatever their encoding, every encoding is verified
//! before it is written, and a crash at any point leaves every object readable (the
//! old value, or the new one). A delta's base is older than the delta and never
//! itself rewritten later (snapshots are packed in id order), so chain depths are
//! fixed when written and bounded by `DELTA_DEPTH`; gc keeps every base a live delta
//! needs (`gc.rs`).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::ids::SnapshotId;
use crate::repo::Repo;
use crate::snapshot;
use crate::store::{Batch, Cf, Durability, Store, codec};
use crate::tree::{self, Content, DirNode, EntryKind};

/// Meta key: the highest snapshot id packed so far (u64 BE).
const META_PACKED: &[u8] = b"packed_through";
/// Meta key: the hash of the store's dictionary object (see `Packer::dictionary`).
const META_DICT: &[u8] = b"pack_dictionary";

/// The dictionary: the first bytes of this many small files spread over a tree...
const DICT_FILES: usize = 64;
/// ...at most this many bytes of each.
const DICT_SLICE: usize = 2048;

/// The longest chain of deltas packing builds (a read decodes at most this many).
pub const DELTA_DEPTH: u32 = 32;

/// Snapshots whose visited objects a pack remembers at a time (see `pack`): the
/// daemon's first pack after a busy spell walks tens of thousands, and sets of every
/// object they hold cost ~200 bytes each, which the process keeps once grown.
const PACK_BATCH: usize = 256;

/// zstd level of packed values (background work: ratio over speed).
const LEVEL: i32 = 12;

/// What a pack did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PackReport {
    /// Snapshots packed.
    pub snapshots: u64,
    /// Objects whose stored value was rewritten.
    pub rewritten: u64,
    /// Of those, values stored as deltas.
    pub deltas: u64,
    /// Stored bytes of the rewritten objects before.
    pub bytes_before: u64,
    /// Their stored bytes after.
    pub bytes_after: u64,
}

impl Repo {
    /// Snapshot ids handed out since the last pack: at least the snapshots a pack
    /// would walk now (ids of failed commits and pruned snapshots count too).
    pub fn unpacked(&self) -> Result<u64> {
        Ok(self
            .shared
            .last_snapshot_id()
            .saturating_sub(packed_through(self.backend())?))
    }

    /// Packs every snapshot taken since the last pack (see the module documentation).
    /// Runs beside snapshots and reads; gc and prune wait for one snapshot's walk at a
    /// time, not for the whole pack.
    pub fn pack(&self) -> Result<PackReport> {
        let _cold = self.store().without_filling();
        let backend = self.backend();
        let done = packed_through(backend)?;
        // Only the records not packed yet: a store of many snapshots would otherwise
        // decode (and hold) every record at every pack.
        let todo = snapshot::after(backend, done)?;
        let mut trees: HashMap<SnapshotId, Hash> = todo.iter().map(|s| (s.id, s.tree)).collect();
        let dict = match backend.get(Cf::Meta, META_DICT)? {
            Some(v) if v.len() == 32 => {
                let h = Hash::from_slice(&v)?;
                match self.store().get(&h) {
                    Ok(b) => Some((h, codec::PreparedBase::new(&b, LEVEL)?)),
                    Err(_) => None,
                }
            }
            _ => None,
        };
        let mut p = Packer {
            store: self.store(),
            depth: HashMap::new(),
            seen: HashSet::new(),
            done: HashSet::new(),
            batch: Batch::new(),
            pending: 0,
            report: PackReport::default(),
            dict,
        };
        for (k, s) in todo.into_iter().enumerate() {
            if k > 0 && k % PACK_BATCH == 0 {
                // What this pack has visited is only a shortcut (every batch is written
                // by now, and a packed value is recognized by its codec): forget it, so
                // a pack of many snapshots holds no more than a batch of them.
                p.seen = HashSet::new();
                p.done = HashSet::new();
                p.depth = HashMap::new();
            }
            // gc waits while this snapshot is walked, and what the walk rewrote lands
            // before the lock goes: gc then sees every delta whose base it must keep.
            let _gc = self.shared.gc_lock.read();
            if snapshot::load(backend, s.id).is_err() {
                continue; // pruned meanwhile
            }
            if let Some((h, _)) = &p.dict
                && !backend.contains(Cf::Objects, h.as_bytes())?
            {
                // Collected meanwhile (no delta used it): build another.
                p.dict = None;
            }
            if p.dict.is_none() {
                p.dictionary(s.tree)?;
            }
            let old = match s.parent {
                Some(id) => match trees.get(&id) {
                    Some(t) => Some(*t),
                    // A parent packed earlier: its record, once.
                    None => match snapshot::load(backend, id) {
                        Ok(p) => {
                            trees.insert(id, p.tree);
                            Some(p.tree)
                        }
                        Err(_) => None,
                    },
                },
                None => None,
            };
            p.dir(old, s.tree)?;
            p.report.snapshots += 1;
            p.batch
                .put(Cf::Meta, META_PACKED, s.id.0.to_be_bytes().to_vec());
            p.write()?;
        }
        if p.report.bytes_before > 0
            && p.report.bytes_before >= self.store().stats().stored_bytes / 8
        {
            // The old versions of rewritten values leave the disk with a compaction;
            // worth its I/O once they are a good part of the store.
            backend.compact(Cf::Objects)?;
        }
        // The progress marker only saves work; the values were verified before they
        // were written and are durable with the next synced write.
        Ok(p.report)
    }
}

/// The highest snapshot id packed so far.
fn packed_through(backend: &dyn crate::store::Backend) -> Result<u64> {
    Ok(match backend.get(Cf::Meta, META_PACKED)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8])),
        _ => 0,
    })
}

struct Packer<'a> {
    store: &'a Store,
    /// Delta depth of objects looked at (0: stored whole).
    depth: HashMap<Hash, u32>,
    /// Directories and files already visited in this pack.
    seen: HashSet<Hash>,
    /// Objects already packed (or left as they are) in this pack: their new values may
    /// still be in `batch`, unread by the backend.
    done: HashSet<Hash>,
    batch: Batch,
    /// Stored-byte change of the batch.
    pending: i64,
    report: PackReport,
    /// The dictionary object, what a file with no predecessor is a delta against,
    /// digested once for all of them.
    dict: Option<(Hash, codec::PreparedBase)>,
}

impl Packer<'_> {
    /// Builds the store's dictionary from the tree `root`: the first `DICT_SLICE` bytes
    /// of `DICT_FILES` small files spread over it, one object that files with no
    /// predecessor are stored as deltas against, so that each small file compresses
    /// with what is common to them all (a language's words, licence headers) rather
    /// than alone.
    fn dictionary(&mut self, root: Hash) -> Result<()> {
        let store = self.store;
        let mut files = Vec::new();
        let mut stack = vec![root];
        while let Some(h) = stack.pop() {
            if files.len() >= 64 * DICT_FILES {
                break;
            }
            let Ok(node) = DirNode::load(store, &h) else {
                continue;
            };
            for (_, kind) in &node.entries {
                match kind {
                    EntryKind::Dir { node, .. } => stack.push(*node),
                    EntryKind::File { content, .. }
                        if !content.chunked && content.size >= 256 && content.size <= 64 << 10 =>
                    {
                        files.push(content.hash)
                    }
                    _ => {}
                }
            }
        }
        if files.len() < 8 {
            return Ok(());
        }
        let step = files.len().div_ceil(DICT_FILES);
        let mut bytes = Vec::with_capacity(DICT_FILES * DICT_SLICE);
        for h in files.iter().step_by(step) {
            let data = store.get(h)?;
            bytes.extend_from_slice(&data[..data.len().min(DICT_SLICE)]);
        }
        let h = Hash::of(&bytes);
        if store.backend().get(Cf::Objects, h.as_bytes())?.is_none() {
            let value = codec::encode_zstd(&bytes, LEVEL)?;
            self.pending += value.len() as i64;
            self.batch.put(Cf::Objects, h.as_bytes().to_vec(), value);
        }
        self.batch.put(Cf::Meta, META_DICT, h.as_bytes().to_vec());
        // Written before any value that needs it (the log keeps the order).
        self.write()?;
        self.depth.insert(h, 0);
        self.done.insert(h);
        self.dict = Some((h, codec::PreparedBase::new(&bytes, LEVEL)?));
        Ok(())
    }

    /// Packs the objects of directory `new` and of everything below it that differs from
    /// `old`, the same path in the parent snapshot.
    fn dir(&mut self, old: Option<Hash>, new: Hash) -> Result<()> {
        if old == Some(new) || !self.seen.insert(new) {
            return Ok(());
        }
        let store = self.store;
        let new_objects = tree::dir_objects(store, &new)?;
        let old_objects = match old {
            Some(o) => tree::dir_objects(store, &o).ok(),
            None => None,
        };
        // The root object with the old root, each page with the page at its position.
        for (i, h) in new_objects.iter().enumerate() {
            if old_objects.as_ref().is_some_and(|o| o.contains(h)) {
                // A page the parent has too: not new here.
                continue;
            }
            let base = old_objects.as_ref().and_then(|o| o.get(i)).copied();
            self.object(*h, base)?;
        }
        let node = DirNode::load(store, &new)?;
        let before = match old {
            Some(o) => DirNode::load(store, &o).ok(),
            None => None,
        };
        for (name, kind) in &node.entries {
            let was = before.as_ref().and_then(|b| b.get(name));
            match kind {
                EntryKind::Dir { node, .. } => {
                    let old = match was {
                        Some(EntryKind::Dir { node: o, .. }) => Some(*o),
                        _ => None,
                    };
                    self.dir(old, *node)?;
                }
                EntryKind::File { content, .. } => {
                    let old = match was {
                        Some(EntryKind::File { content: c, .. }) => Some(*c),
                        _ => None,
                    };
                    self.file(old, *content)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Packs a file's objects against its previous content `old`.
    fn file(&mut self, old: Option<Content>, new: Content) -> Result<()> {
        if old.map(|o| o.hash) == Some(new.hash) || !self.seen.insert(new.hash) {
            return Ok(());
        }
        let old = old.filter(|o| o.chunked == new.chunked);
        if !new.chunked {
            // A file with no predecessor: against the dictionary.
            let base = old.map(|o| o.hash).or(self.dict.as_ref().map(|d| d.0));
            return self.object(new.hash, base);
        }
        self.object(new.hash, old.map(|o| o.hash))?;
        let store = self.store;
        let chunks = tree::chunks_of(store, &new)?;
        let old_chunks = match old {
            Some(o) => tree::chunks_of(store, &o).unwrap_or_default(),
            None => Vec::new(),
        };
        let kept: HashSet<Hash> = old_chunks.iter().map(|c| c.0).collect();
        for (i, (c, _)) in chunks.iter().enumerate() {
            if kept.contains(c) || !self.seen.insert(*c) {
                continue;
            }
            self.object(*c, old_chunks.get(i).map(|o| o.0))?;
        }
        Ok(())
    }

    /// Rewrites object `h` as the smallest of: its value now, zstd, a delta against
    /// `base`. Objects already packed are left as they are.
    fn object(&mut self, h: Hash, base: Option<Hash>) -> Result<()> {
        if !self.done.insert(h) {
            return Ok(());
        }
        let store = self.store;
        let Some(value) = store.backend().get(Cf::Objects, h.as_bytes())? else {
            // Missing: fsck reports it; nothing to pack.
            return Ok(());
        };
        if matches!(
            value.first(),
            Some(&codec::CODEC_ZSTD) | Some(&codec::CODEC_DELTA)
        ) {
            return Ok(());
        }
        let bytes = store.decode_value(&h, &value)?;
        let mut best = codec::encode_zstd(&bytes, LEVEL)?;
        let mut depth = 0;
        if let Some(b) = base.filter(|b| *b != h) {
            let d = self.depth_of(&b)?;
            if d < DELTA_DEPTH {
                let delta = match &self.dict {
                    Some((dict, prepared)) if *dict == b => {
                        codec::encode_delta_prepared(&bytes, &b, prepared)?
                    }
                    _ => {
                        let base_bytes = store.get(&b)?;
                        codec::encode_delta(&bytes, &b, &base_bytes, LEVEL)?
                    }
                };
                if delta.len() < best.len() {
                    best = delta;
                    depth = d + 1;
                }
            }
        }
        if best.len() >= value.len() {
            self.depth.insert(h, 0);
            return Ok(());
        }
        // Never write what does not read back as the object.
        let check = store.decode_value(&h, &best)?;
        if check != bytes {
            return Err(Error::Corrupt {
                hash: h,
                reason: "a packed value does not decode to the object".into(),
            });
        }
        self.depth.insert(h, depth);
        self.report.rewritten += 1;
        self.report.deltas += u64::from(depth > 0);
        self.report.bytes_before += value.len() as u64;
        self.report.bytes_after += best.len() as u64;
        self.pending += best.len() as i64 - value.len() as i64;
        self.batch.put(Cf::Objects, h.as_bytes().to_vec(), best);
        Ok(())
    }

    /// How many deltas deep object `h` is stored.
    fn depth_of(&mut self, h: &Hash) -> Result<u32> {
        // Objects not known yet, each the delta base of the one before it.
        let mut chain = Vec::new();
        let mut cur = *h;
        let mut d = loop {
            if let Some(d) = self.depth.get(&cur) {
                break *d;
            }
            let value = self
                .store
                .backend()
                .get(Cf::Objects, cur.as_bytes())?
                .ok_or(Error::MissingObject(cur))?;
            match codec::delta_base(&value) {
                Some(_) if chain.len() > 2 * DELTA_DEPTH as usize => break 2 * DELTA_DEPTH,
                Some(b) => {
                    chain.push(cur);
                    cur = b;
                }
                None => {
                    self.depth.insert(cur, 0);
                    break 0;
                }
            }
        };
        for x in chain.iter().rev() {
            d += 1;
            self.depth.insert(*x, d);
        }
        Ok(self.depth.get(h).copied().unwrap_or(d))
    }

    /// Writes the rewritten values (buffered: the old values they replace stay valid
    /// until then, and the new ones are durable with the next synced write).
    fn write(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        if batch.is_empty() {
            return Ok(());
        }
        self.store.write_counted(
            batch,
            0,
            std::mem::take(&mut self.pending),
            Durability::Buffered,
        )
    }
}
