//! Issue 9 item 3: the store's size against git's for the same history. 100 snapshots,
//! each editing 1% of a 10k-file source-like tree (half the edits change a line, half
//! append one), then one adding a 50 MB file and one changing 1 KiB in its middle. The
//! same history is committed to git and packed with `git gc --aggressive`. Printed:
//! the tree's size, git's objects, and helios's stored values before and after
//! `Repo::pack` (with its time) and its database on disk. Run: `scripts/bench space`.
//! State and the git repository live in `HELIOS_BENCH_DIR` (default `/dev/shm`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use helios_snapshot::Repo;
use helios_snapshot::store::Cf;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A source-like line.
    fn line(&mut self) -> String {
        const WORDS: &[&str] = &[
            "let", "value", "self", "return", "match", "fn", "config", "result", "=", "+", "(",
            ")", "{", "}", "42", "index", "buffer", ".len()", "&mut", "Some", "None",
        ];
        let n = 3 + self.next() % 9;
        let mut s = "    ".repeat((self.next() % 3) as usize);
        for _ in 0..n {
            s.push_str(WORDS[(self.next() % WORDS.len() as u64) as usize]);
            s.push(' ');
        }
        s.push('\n');
        s
    }
}

fn du(p: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(p).output().expect("du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// git with its repository in `dir/git` and its work tree in `dir/tree` (outside the
/// tree helios imports).
fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .arg("--git-dir")
        .arg(dir.join("git"))
        .arg("--work-tree")
        .arg(dir.join("tree"))
        .args(args)
        .status()
        .expect("git");
    assert!(st.success(), "git {args:?}");
}

/// The stored bytes of every object's value, counted by a scan.
fn stored(repo: &Repo) -> u64 {
    let mut n = 0u64;
    repo.store()
        .backend()
        .scan(Cf::Objects, &[], &mut |_, v| {
            n += v.len() as u64;
            Ok(true)
        })
        .expect("scan");
    n
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test` this is a smoke test of the
    // same path at a tenth of the size (its checks still hold).
    let full = std::env::args().any(|a| a == "--bench");
    let (files, steps, big_mib) = if full {
        (10_000, 100, 50)
    } else {
        (1_000, 5, 2)
    };
    let base = std::env::var_os("HELIOS_BENCH_DIR")
        .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let src = dir.path().join("tree");
    let mut rng = Rng(0x5eed);
    let mut paths = Vec::new();
    for i in 0..files {
        let rel = format!("d{}/d{}/f{}.rs", i / 1000, (i / 100) % 10, i % 100);
        let p = src.join(&rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let lines = 20 + rng.next() % 80;
        let text: String = (0..lines).map(|_| rng.line()).collect();
        std::fs::write(&p, text).expect("write");
        paths.push(rel);
    }
    let top = dir.path();
    git(top, &["init", "-q"]);
    git(top, &["config", "user.email", "bench@helios"]);
    git(top, &["config", "user.name", "bench"]);
    let commit = |msg: &str| {
        git(top, &["add", "-A"]);
        git(top, &["commit", "-q", "-m", msg]);
    };
    commit("import");
    let repo = Repo::open(&dir.path().join("state")).expect("open");
    let imported = repo.import(&src, None).expect("import");
    let one_copy = repo.stats().expect("stats").stored_bytes;
    let t = Instant::now();
    let first = repo.pack().expect("pack");
    let first_secs = t.elapsed().as_secs_f64();
    let one_copy_packed = repo.stats().expect("stats").stored_bytes;
    let ws = repo
        .create_workspace(Some(imported.id), false, Default::default())
        .expect("fork");
    let edit = |rel: &str, data: &[u8]| {
        std::fs::write(src.join(rel), data).expect("write");
        ws.write_file(rel, data).expect("write");
    };
    for step in 0..steps {
        for k in 0..files / 100 {
            let rel = &paths[(rng.next() % paths.len() as u64) as usize];
            let text = std::fs::read_to_string(src.join(rel)).expect("read");
            let mut lines: Vec<String> = text.lines().map(|l| format!("{l}\n")).collect();
            if k % 2 == 0 && !lines.is_empty() {
                let at = (rng.next() % lines.len() as u64) as usize;
                lines[at] = rng.line();
            } else {
                lines.push(rng.line());
            }
            edit(rel, lines.concat().as_bytes());
        }
        commit(&format!("step {step}"));
        ws.snapshot(None, Default::default()).expect("snapshot");
    }
    let mut big = vec![0u8; big_mib << 20];
    for c in big.chunks_mut(8) {
        let r = rng.next().to_le_bytes();
        c.copy_from_slice(&r[..c.len()]);
    }
    edit("big.bin", &big);
    commit("big");
    ws.snapshot(None, Default::default()).expect("snapshot");
    let mid = big.len() / 2;
    for b in &mut big[mid..mid + 1024] {
        *b = (rng.next() & 0xff) as u8;
    }
    edit("big.bin", &big);
    commit("big edit");
    ws.snapshot(None, Default::default()).expect("snapshot");

    let tree = du(&src);
    let t = Instant::now();
    git(top, &["gc", "-q", "--aggressive", "--prune=now"]);
    let git_secs = t.elapsed().as_secs_f64();
    let git_bytes = du(&top.join("git/objects"));
    let before = repo.stats().expect("stats").stored_bytes;
    assert_eq!(
        before,
        stored(&repo),
        "the store's byte counter before the pack"
    );
    let t = Instant::now();
    let report = repo.pack().expect("pack");
    let pack_secs = t.elapsed().as_secs_f64();
    let after = repo.stats().expect("stats").stored_bytes;
    assert_eq!(
        after,
        stored(&repo),
        "the store's byte counter after the pack"
    );
    let disk = du(&dir.path().join("state/db"));
    if std::env::var_os("SPACE_DEBUG").is_some() {
        let _ = Command::new("ls")
            .arg("-la")
            .arg(dir.path().join("state/db"))
            .status();
    }
    // Stored values by codec (0 raw, 1 lz4, 2 zstd, 3 delta) and size class.
    let mut by: std::collections::BTreeMap<(u8, &str), (u64, u64)> = Default::default();
    repo.store()
        .backend()
        .scan(Cf::Objects, &[], &mut |_, v| {
            let class = match v.len() {
                0..=255 => "<256",
                256..=4095 => "<4K",
                4096..=65535 => "<64K",
                _ => ">=64K",
            };
            let e = by.entry((v[0], class)).or_default();
            e.0 += 1;
            e.1 += v.len() as u64;
            Ok(true)
        })
        .expect("scan");
    for ((tag, class), (n, bytes)) in &by {
        println!(
            "space: values with codec {tag}, {class} B: {n} objects, {:.2} MiB",
            mib(*bytes)
        );
    }
    println!(
        "space: tree {:.1} MiB ({files} files + {big_mib} MiB file, {} commits)",
        mib(tree),
        steps + 2
    );
    println!(
        "space: helios, the imported tree alone: {:.1} MiB, packed {:.1} MiB ({} objects rewritten in {first_secs:.1} s)",
        mib(one_copy),
        mib(one_copy_packed),
        first.rewritten
    );
    println!(
        "space: git gc --aggressive: objects {:.1} MiB ({:.1} s)",
        mib(git_bytes),
        git_secs
    );
    println!(
        "space: helios before pack: {:.1} MiB of values = {:.2}x git",
        mib(before),
        before as f64 / git_bytes as f64
    );
    println!(
        "space: helios after pack: {:.1} MiB of values = {:.2}x git; database on disk {:.1} MiB = {:.2}x git (pack {:.1} s: {} objects rewritten, {} as deltas)",
        mib(after),
        after as f64 / git_bytes as f64,
        mib(disk),
        disk as f64 / git_bytes as f64,
        pack_secs,
        report.rewritten,
        report.deltas
    );
}
