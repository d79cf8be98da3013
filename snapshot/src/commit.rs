//! The one commit path. Whatever an engine knows of what changed — the FUSE engine's
//! inode table, an overlay upperdir scanned into an edit list (`edits.rs`), a directory
//! being imported — is a `ChangeSource`: it builds the tree of what it holds now,
//! storing only what is new. `land` then allocates the snapshot id and writes the new
//! objects, the snapshot record, its index keys, the id counters and whatever the source
//! moves with it (a workspace's record, its journal deletes) in one synced batch: a
//! commit is whole or absent. A failed write tells the source to undo its marks.

use std::time::Instant;

use crate::error::Result;
use crate::ids::SnapshotId;
use crate::repo::Shared;
use crate::snapshot::{self, Metrics, Snapshot};
use crate::store::{Batch, Durability, ObjectWriter};
use crate::tree::TreeRef;
use crate::workspace::now;

/// What a source built.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Built {
    /// The tree of the source's current content, stored (or staged) in full.
    pub tree: TreeRef,
    /// Paths added, modified or removed against the source's base.
    pub changed_paths: u64,
}

/// A source of changes (see the module documentation).
pub(crate) trait ChangeSource {
    /// Builds the current tree, staging new objects through `w`: O(changes).
    fn build(&mut self, w: &mut ObjectWriter<'_>) -> Result<Built>;

    /// Stages what lands together with the commit (a workspace's moved record).
    fn stage(&mut self, _landed: &Landed, _batch: &mut Batch) {}

    /// The batch is staged: release what need not be held across its write (a
    /// workspace's lock, so that its traffic goes on while the log syncs).
    fn before_write(&mut self) {}

    /// The write returned, either way: take back what `before_write` released.
    fn after_write(&mut self) {}

    /// The batch landed: what `build` marked is now committed.
    fn landed(&mut self, _landed: &Landed) {}

    /// `build` or the write failed: undo every mark `build` made.
    fn failed(&mut self) {}
}

/// Where a commit goes.
pub(crate) enum Landing {
    /// A new snapshot, child of `parent`.
    Snapshot {
        parent: Option<SnapshotId>,
        /// For a merge: the snapshot merged into `parent`.
        merged: Option<SnapshotId>,
        label: Option<String>,
        annotations: serde_json::Map<String, serde_json::Value>,
        /// When the request started, for the snapshot's latency metric.
        start: Instant,
        /// Synced before the commit returns, or only written to the log.
        durability: Durability,
    },
    /// No snapshot: the tree alone (a workspace's `head`, saved at a clean stop).
    Tree,
}

impl Landing {
    /// A new snapshot, child of `parent` (merging `merged` into it, for a merge), with
    /// the label, annotations and durability of `req`; `start` is when the request began.
    pub(crate) fn snapshot(
        parent: Option<SnapshotId>,
        merged: Option<SnapshotId>,
        req: crate::SnapshotRequest,
        start: Instant,
    ) -> Landing {
        Landing::Snapshot {
            parent,
            merged,
            label: req.label,
            annotations: req.annotations,
            start,
            durability: req.durability,
        }
    }
}

/// What landed.
#[derive(Clone, Debug)]
pub(crate) struct Landed {
    /// The committed tree.
    pub tree: TreeRef,
    /// The new snapshot, for `Landing::Snapshot`.
    pub snapshot: Option<Snapshot>,
}

impl Landed {
    /// The snapshot of a `Landing::Snapshot`.
    pub(crate) fn into_snapshot(self) -> Result<Snapshot> {
        self.snapshot.ok_or_else(|| {
            crate::error::Error::InvalidArgument("a tree landing made no snapshot".into())
        })
    }
}

/// Builds `source` and writes it, with everything it moves, in one batch: synced, or
/// for a snapshot asked for with `Durability::Buffered`, written to the log unsynced
/// (it survives a kill of the process, not a power cut).
pub(crate) fn land(
    shared: &Shared,
    source: &mut dyn ChangeSource,
    mut w: ObjectWriter<'_>,
    landing: Landing,
) -> Result<Landed> {
    let built = match source.build(&mut w) {
        Ok(b) => b,
        Err(e) => {
            source.failed();
            return Err(e);
        }
    };
    let mut batch = Batch::new();
    let mut durability = Durability::Sync;
    let snapshot = match landing {
        Landing::Snapshot {
            parent,
            merged,
            label,
            annotations,
            start,
            durability: d,
        } => {
            durability = d;
            let snap = Snapshot {
                id: shared.alloc_snapshot_id(),
                parent,
                merged,
                root: built.tree.fp,
                tree: built.tree.node,
                bytes: built.tree.bytes,
                label,
                created_ms: (now() / 1_000_000) as u64,
                annotations,
                metrics: Metrics {
                    latency_us: start.elapsed().as_micros() as u64,
                    new_objects: w.new_objects,
                    new_bytes: w.new_bytes,
                    changed_paths: built.changed_paths,
                },
            };
            snapshot::stage_insert(&mut batch, &snap);
            shared.stage_counters(&mut batch);
            Some(snap)
        }
        Landing::Tree => None,
    };
    let landed = Landed {
        tree: built.tree,
        snapshot,
    };
    source.stage(&landed, &mut batch);
    source.before_write();
    let written = w.commit_with(batch, durability);
    source.after_write();
    if let Err(e) = written {
        source.failed();
        return Err(e);
    }
    if let Some(s) = &landed.snapshot {
        shared.count_snapshots(1, s.bytes as i64);
    }
    source.landed(&landed);
    Ok(landed)
}
