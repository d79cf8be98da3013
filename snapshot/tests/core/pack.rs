//! Packing: history rewritten as zstd and deltas reads back exactly, survives gc of
//! pruned branches, a reopen and a crash mid-pack, and takes less space.

use std::sync::Arc;

use helios_snapshot::store::{Backend, MemBackend};
use helios_snapshot::{Repo, SnapshotId};

use super::{contents, mem_repo, rocks_repo};

/// Source-like text: `n` numbered lines.
fn text(seed: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("    let value_{i} = compute({seed}, {i}); // line {i}\n"))
        .collect()
}

/// A tree of 20 directories of 30 text files, then `steps` snapshots each changing one
/// line of 6 files and appending a line to 3, and a 2 MiB file with 1 KiB changed in
/// its middle: the snapshots and what each holds.
/// Snapshots and what each holds.
type History = Vec<(SnapshotId, Vec<(String, Option<Vec<u8>>)>)>;

fn history(repo: &Repo, steps: usize) -> History {
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    let mut files = Vec::new();
    for d in 0..20 {
        ws.mkdir_path(&format!("d{d}")).expect("mkdir");
        for f in 0..30 {
            let p = format!("d{d}/f{f}.rs");
            ws.write_file(&p, text(d * 100 + f, 40).as_bytes())
                .expect("write");
            files.push(p);
        }
    }
    let mut out = Vec::new();
    let s = ws.snapshot(None, Default::default()).expect("snapshot");
    out.push((s.id, contents(&ws)));
    for step in 0..steps {
        for k in 0..9 {
            let p = &files[(step * 37 + k * 101) % files.len()];
            let mut data = ws.read_file(p).expect("read");
            if k < 6 {
                let at = data.len() / 2;
                data.splice(at..at + 4, format!("#{step:03}").bytes());
            } else {
                data.extend(format!("// appended at step {step}\n").bytes());
            }
            ws.write_file(p, &data).expect("write");
        }
        let s = ws.snapshot(None, Default::default()).expect("snapshot");
        out.push((s.id, contents(&ws)));
    }
    let mut big: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    ws.write_file("big.bin", &big).expect("write");
    let s = ws.snapshot(None, Default::default()).expect("snapshot");
    out.push((s.id, contents(&ws)));
    let mid = big.len() / 2;
    big[mid..mid + 1024].fill(7);
    ws.write(
        ws.resolve("big.bin").expect("big"),
        mid as u64,
        &big[mid..mid + 1024],
    )
    .expect("write");
    let s = ws.snapshot(None, Default::default()).expect("snapshot");
    out.push((s.id, contents(&ws)));
    repo.delete_workspace(ws.id()).expect("drop");
    out
}

fn check(repo: &Repo, snaps: &History) {
    for (id, want) in snaps {
        let ws = repo
            .create_workspace(Some(*id), true, Default::default())
            .expect("open snapshot");
        assert_eq!(&contents(&ws), want, "snapshot {id}");
    }
    let fsck = repo.fsck().expect("fsck");
    assert!(fsck.ok(), "{:?}", fsck.errors);
}

#[test]
fn packed_history_reads_back_and_is_smaller() {
    let (_d, repo) = rocks_repo();
    let snaps = history(&repo, 30);
    let before = repo.stats().expect("stats").stored_bytes;
    let report = repo.pack().expect("pack");
    assert_eq!(report.snapshots, snaps.len() as u64);
    assert!(report.deltas > 30, "{report:?}");
    let after = repo.stats().expect("stats").stored_bytes;
    assert!(
        after * 2 < before,
        "packing 30 small edits: {before} -> {after} bytes"
    );
    // Nothing new: a second pack rewrites nothing, and nothing is left to pack.
    assert_eq!(repo.pack().expect("pack again").rewritten, 0);
    assert_eq!(repo.unpacked().expect("unpacked"), 0);
    check(&repo, &snaps);
    // A fresh process reads the packed values (no cache to lean on).
    let dir = repo.dir().to_path_buf();
    drop(repo);
    let repo = Repo::open(&dir).expect("reopen");
    check(&repo, &snaps);
}

/// A pack of more snapshots than it remembers visited objects for (256 at a time): the
/// snapshots past each batch boundary are packed as deltas too, and everything reads
/// back.
#[test]
fn a_pack_of_many_snapshots_packs_across_its_batches() {
    let (_d, repo) = rocks_repo();
    let snaps = history(&repo, 300);
    let report = repo.pack().expect("pack");
    assert_eq!(report.snapshots, snaps.len() as u64);
    // Nine edited files per step, each a delta against its predecessor.
    assert!(report.deltas > 9 * 290, "{report:?}");
    assert_eq!(repo.pack().expect("pack again").rewritten, 0);
    check(&repo, &snaps);
}

/// A base in a pruned branch stays while a live delta needs it: branch A edits f.rs
/// twice (v2, then v3, packed as a delta against v2), sibling B holds v3 too (the same
/// object); pruning A leaves v2 reachable only as v3's base.
#[test]
fn gc_keeps_the_bases_live_deltas_need() {
    let (_d, repo) = rocks_repo();
    let ws = repo
        .create_workspace(None, false, Default::default())
        .expect("create");
    let v1 = text(1, 200).into_bytes();
    ws.write_file("f.rs", &v1).expect("write");
    let root = ws.snapshot(None, Default::default()).expect("root");
    let mut v2 = v1.clone();
    v2.extend(b"// two\n");
    let mut v3 = v2.clone();
    v3.extend(b"// three\n");
    let a = repo
        .create_workspace(Some(root.id), false, Default::default())
        .expect("fork a");
    a.write_file("f.rs", &v2).expect("write");
    let a1 = a.snapshot(None, Default::default()).expect("a1");
    a.write_file("f.rs", &v3).expect("write");
    a.snapshot(None, Default::default()).expect("a2");
    repo.delete_workspace(a.id()).expect("drop a");
    let b = repo
        .create_workspace(Some(root.id), false, Default::default())
        .expect("fork b");
    b.write_file("f.rs", &v3).expect("write");
    b.snapshot(None, Default::default()).expect("b1");
    let report = repo.pack().expect("pack");
    assert!(report.deltas >= 2, "{report:?}");
    repo.prune(a1.id, true).expect("prune branch a");
    repo.gc().expect("gc");
    let fsck = repo.fsck().expect("fsck");
    assert!(fsck.ok(), "{:?}", fsck.errors);
    // A fresh process: nothing cached.
    let dir = repo.dir().to_path_buf();
    let bid = b.id();
    drop((a, b, ws));
    drop(repo);
    let repo = Repo::open(&dir).expect("reopen");
    let b = repo.open_workspace(bid).expect("reopen b");
    assert_eq!(b.read_file("f.rs").expect("read"), v3);
}

/// A crash loses nothing whatever part of a pack was durable: one history packed and
/// synced (a later synced write carries the pack's buffered writes), another packed
/// and cut off by a power loss; every snapshot of both reads back, and a later pack
/// completes.
#[test]
fn a_crash_mid_pack_loses_nothing() {
    let (dir, backend, repo) = mem_repo();
    let first = history(&repo, 8);
    repo.pack().expect("pack");
    let second = history(&repo, 8);
    repo.pack().expect("pack the second");
    drop(repo);
    backend.power_cut();
    let repo = Repo::open_with(
        dir.path(),
        Arc::new(backend.clone()) as Arc<dyn Backend>,
        64 << 20,
    )
    .expect("reopen");
    check(&repo, &first);
    check(&repo, &second);
    repo.pack().expect("pack again");
    check(&repo, &first);
    check(&repo, &second);
    let _ = MemBackend::new();
}

/// gc and prune run between the snapshots of a pack: branches pruned and collected while
/// a pack walks the rest leave every kept snapshot readable and fsck clean.
#[test]
fn gc_and_prune_during_a_pack() {
    let (_d, repo) = rocks_repo();
    let repo = Arc::new(repo);
    let kept = history(&repo, 6);
    // Branches to prune while the pack runs.
    let mut branches = Vec::new();
    for i in 0..6 {
        let w = repo
            .create_workspace(Some(kept[0].0), false, Default::default())
            .expect("fork");
        for k in 0..20 {
            w.write_file(&format!("d{k}/f{i}.rs"), text(i * 7 + k, 50).as_bytes())
                .expect("write");
        }
        branches.push(w.snapshot(None, Default::default()).expect("snapshot").id);
        repo.delete_workspace(w.id()).expect("drop");
    }
    let packer = {
        let repo = repo.clone();
        std::thread::spawn(move || repo.pack())
    };
    for b in branches {
        repo.prune(b, true).expect("prune");
        repo.gc().expect("gc");
    }
    packer.join().expect("pack thread").expect("pack");
    repo.pack().expect("pack the rest");
    repo.gc().expect("gc");
    check(&repo, &kept);
}
