//! Criterion benches of the snapshot core's hot paths: snapshot, fork, checkout, diff,
//! store put/get and import. The repo lives in `HELIOS_BENCH_DIR` (default `/dev/shm`,
//! tmpfs), so the figures are the CPU cost of helios, not the disk's fsync latency.
//! Run: `scripts/bench core` (or `cargo bench --bench core`).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use helios_snapshot::store::Batch;
use helios_snapshot::{Repo, Snapshot, Workspace};

/// xorshift64: fast, deterministic pseudo-random bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    /// Text-like bytes (compressible like source code).
    fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "fn ", "let ", "self", ".", "(", ")", " {\n", "}\n", "x", "42", " = ", "return",
            "\n    ",
        ];
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(WORDS[(self.next() % WORDS.len() as u64) as usize].as_bytes());
        }
        v.truncate(n);
        v
    }
}

fn bench_dir() -> PathBuf {
    std::env::var_os("HELIOS_BENCH_DIR").map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from)
}

/// Writes `files` text files of ~`size` bytes into `root`: leaf directories of
/// `per_dir` files, three levels of directories above them, 10 per level at most.
fn make_tree_with(
    root: &Path,
    files: usize,
    size: usize,
    per_dir: usize,
    rng: &mut Rng,
) -> Vec<String> {
    let mut paths = Vec::with_capacity(files);
    let leaves = files.div_ceil(per_dir);
    let fan = (leaves as f64).cbrt().ceil() as usize;
    for i in 0..files {
        let leaf = i / per_dir;
        let rel = format!(
            "d{}/d{}/d{}/f{}.rs",
            leaf / (fan * fan),
            (leaf / fan) % fan,
            leaf % fan,
            i % per_dir
        );
        let p = root.join(&rel);
        if i % per_dir == 0 {
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        }
        let len = size / 2 + (rng.next() as usize % size);
        std::fs::write(&p, rng.text(len)).expect("write");
        paths.push(rel);
    }
    paths
}

/// `make_tree_with` leaves of 100 files.
fn make_tree(root: &Path, files: usize, size: usize, rng: &mut Rng) -> Vec<String> {
    make_tree_with(root, files, size, 100, rng)
}

struct Fixture {
    _dir: tempfile::TempDir,
    repo: Arc<Repo>,
    base: Snapshot,
    paths: Vec<String>,
}

fn fixture(files: usize) -> Fixture {
    fixture_with(files, 100)
}

fn fixture_with(files: usize, per_dir: usize) -> Fixture {
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let src = dir.path().join("src");
    let mut rng = Rng(0x5eed);
    let paths = make_tree_with(&src, files, 2048, per_dir, &mut rng);
    let repo = Arc::new(Repo::open(&dir.path().join("state")).expect("open"));
    let base = repo.import(&src, None).expect("import");
    Fixture {
        _dir: dir,
        repo,
        base,
        paths,
    }
}

fn change(ws: &Workspace, paths: &[String], k: usize, rng: &mut Rng) {
    for _ in 0..k {
        let p = &paths[rng.next() as usize % paths.len()];
        let ino = ws.resolve(p).expect("resolve");
        ws.write(ino, 0, &rng.bytes(64)).expect("write");
    }
}

fn snapshot_benches(c: &mut Criterion) {
    let fx = fixture(100_000);
    let mut g = c.benchmark_group("snapshot_100k_tree");
    for k in [1usize, 10, 100] {
        let ws = fx
            .repo
            .create_workspace(Some(fx.base.id), false, Default::default())
            .expect("fork");
        let mut rng = Rng(k as u64 + 1);
        g.bench_function(format!("{k}_changed_files"), |b| {
            b.iter_batched(
                || change(&ws, &fx.paths, k, &mut rng),
                |()| black_box(ws.snapshot(None, Default::default()).expect("snapshot")),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();

    // The same, in a source-tree-like layout: leaf directories of 20 files.
    let fx20 = fixture_with(100_000, 20);
    let mut g = c.benchmark_group("snapshot_100k_tree_20_per_dir");
    for k in [1usize, 10] {
        let ws = fx20
            .repo
            .create_workspace(Some(fx20.base.id), false, Default::default())
            .expect("fork");
        let mut rng = Rng(k as u64 + 1);
        g.bench_function(format!("{k}_changed_files"), |b| {
            b.iter_batched(
                || change(&ws, &fx20.paths, k, &mut rng),
                |()| black_box(ws.snapshot(None, Default::default()).expect("snapshot")),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
    drop(fx20);

    let mut g = c.benchmark_group("vst_100k_tree");
    g.bench_function("fork", |b| {
        b.iter(|| {
            black_box(
                fx.repo
                    .create_workspace(Some(fx.base.id), false, Default::default())
                    .expect("fork"),
            )
        })
    });
    let ws = fx
        .repo
        .create_workspace(Some(fx.base.id), false, Default::default())
        .expect("fork");
    let mut rng = Rng(7);
    change(&ws, &fx.paths, 10, &mut rng);
    let s1 = ws.snapshot(None, Default::default()).expect("snap");
    ws.checkout(fx.base.id, false).expect("checkout");
    change(&ws, &fx.paths, 10, &mut rng);
    let s2 = ws.snapshot(None, Default::default()).expect("snap");
    let mut flip = false;
    g.bench_function("checkout", |b| {
        b.iter(|| {
            flip = !flip;
            ws.checkout(if flip { s1.id } else { s2.id }, false)
                .expect("checkout")
        })
    });
    g.bench_function("diff_siblings_10_changes_each", |b| {
        b.iter(|| black_box(fx.repo.diff(s1.id, s2.id).expect("diff")))
    });
    // A new snapshot each time (the same tree: its objects deduplicate), synced.
    g.bench_function("merge_siblings_10_changes_each", |b| {
        b.iter(|| {
            black_box(
                fx.repo
                    .merge(s1.id, s2.id, Default::default())
                    .expect("merge"),
            )
        })
    });
    g.finish();
}

fn store_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let repo = Repo::open(dir.path()).expect("open");
    let store = repo.store();
    let mut g = c.benchmark_group("store");
    for (name, size) in [("4KiB", 4096usize), ("1MiB", 1 << 20)] {
        let mut rng = Rng(size as u64);
        let mut data = rng.bytes(size);
        let mut n = 0u64;
        g.bench_function(format!("put_{name}"), |b| {
            b.iter(|| {
                n += 1;
                data[..8].copy_from_slice(&n.to_le_bytes());
                let mut w = store.writer();
                let h = w.put(&data).expect("put");
                w.commit_with(Batch::new(), helios_snapshot::store::Durability::Buffered)
                    .expect("commit");
                h
            })
        });
        let mut w = store.writer();
        let h = w.put(&data).expect("put");
        w.commit(Batch::new()).expect("commit");
        g.bench_function(format!("get_cached_{name}"), |b| {
            b.iter(|| black_box(store.get(&h).expect("get")))
        });
        g.bench_function(format!("get_verified_from_db_{name}"), |b| {
            b.iter(|| black_box(store.get_uncached(&h).expect("get")))
        });
    }
    g.finish();
}

fn import_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("tempdir");
    let src = dir.path().join("src");
    let mut rng = Rng(3);
    make_tree(&src, 10_000, 4096, &mut rng);
    let mut g = c.benchmark_group("import");
    g.sample_size(10);
    let mut i = 0;
    g.bench_function("10k_files_fresh_store", |b| {
        b.iter_batched(
            || {
                i += 1;
                let state = dir.path().join(format!("state{i}"));
                (Repo::open(&state).expect("open"), state)
            },
            |(repo, state)| {
                black_box(repo.import(&src, None).expect("import"));
                drop(repo);
                let _ = std::fs::remove_dir_all(state);
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Not a timing: the space 100 snapshots take when each changes 1% of a 10k-file tree,
/// as a multiple of the stored size of one copy. Printed for `scripts/bench`.
fn space_report(_: &mut Criterion) {
    let fx = fixture(10_000);
    let one_copy = fx.repo.stats().expect("stats").stored_bytes;
    let ws = fx
        .repo
        .create_workspace(Some(fx.base.id), false, Default::default())
        .expect("fork");
    let mut rng = Rng(11);
    for _ in 0..100 {
        for _ in 0..100 {
            // An agent-like edit: rewrite one line somewhere in the file.
            let p = &fx.paths[rng.next() as usize % fx.paths.len()];
            let ino = ws.resolve(p).expect("resolve");
            let size = ws.getattr(ino).expect("stat").size;
            ws.write(ino, rng.next() % size.max(1), &rng.text(40))
                .expect("write");
        }
        ws.snapshot(None, Default::default()).expect("snapshot");
    }
    let total = fx.repo.stats().expect("stats").stored_bytes;
    println!(
        "space: one copy {} KiB; after 100 snapshots x 1% changed files: {} KiB = {:.2}x one copy",
        one_copy >> 10,
        total >> 10,
        total as f64 / one_copy as f64
    );
    let t = std::time::Instant::now();
    fx.repo.pack().expect("pack");
    let packed = fx.repo.stats().expect("stats").stored_bytes;
    println!(
        "space: packed ({:.1} s): {} KiB = {:.2}x one copy as committed",
        t.elapsed().as_secs_f64(),
        packed >> 10,
        packed as f64 / one_copy as f64
    );
}

criterion_group!(
    benches,
    snapshot_benches,
    store_benches,
    import_benches,
    space_report
);
criterion_main!(benches);
