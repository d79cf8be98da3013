//! Latency of snapshot, fork and checkout through the daemon's socket (p50/p99), the
//! throughput of 32 concurrent clients, and 256 mounted workspaces at once.
//! Run: `scripts/bench api`. The daemon's state lives in `HELIOS_BENCH_DIR` (default
//! `/var/tmp`, a real disk: snapshots are synced). `cargo test` runs it in a quick mode.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_helios");

/// One request on a fresh connection, as a controller would send it.
fn http(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: helios\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("receive");
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

fn field(json: &str, key: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("json");
    v[key].as_str().expect("field").to_string()
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let base = std::env::var_os("HELIOS_BENCH_DIR")
            .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        let dir = tempfile::tempdir_in(base).expect("tempdir");
        let socket = dir.path().join("helios.sock");
        // HELIOS_BENCH_LOG=<file>: the daemon's log (RUST_LOG as given, else warn).
        let log = std::env::var_os("HELIOS_BENCH_LOG")
            .map(|p| std::fs::File::create(&p).expect("create the log file"));
        let child = Command::new(BIN)
            .args(["serve", "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(&socket)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log.map_or_else(Stdio::null, Stdio::from))
            .spawn()
            .expect("spawn daemon");
        for _ in 0..500 {
            if UnixStream::connect(&socket).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon { child, socket, dir }
    }

    fn mount(&self, name: &str, from: Option<&str>) -> (String, PathBuf) {
        self.mount_with(name, from, "auto")
    }

    fn mount_with(&self, name: &str, from: Option<&str>, engine: &str) -> (String, PathBuf) {
        let mp = self.dir.path().join(name);
        std::fs::create_dir_all(&mp).expect("mkdir");
        let from = from.map_or(String::new(), |f| format!(", \"from\": \"{f}\""));
        let (st, body) = http(
            &self.socket,
            "POST",
            "/v1/workspaces",
            &format!("{{\"mountpoint\": {mp:?}{from}, \"engine\": \"{engine}\"}}"),
        );
        assert_eq!(st, 201, "{body}");
        (field(&body, "id"), mp)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn report(name: &str, mut samples: Vec<Duration>, target: Option<&str>) {
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{name:<40} n={:<5} p50={:>9.3?} p99={:>9.3?} mean={:>9.3?}{}",
        samples.len(),
        p(0.50),
        p(0.99),
        mean,
        target.map_or(String::new(), |t| format!("   (target: {t})"))
    );
}

fn main() {
    // `cargo test --benches` passes no `--bench`: run a few iterations as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 5 } else { 300 };
    let d = Daemon::start();
    let (ws, mp) = d.mount_with("main", None, "fuse");

    // Snapshot of a small change, synced and buffered.
    let mut snaps = Vec::new();
    for durability in ["sync", "buffered"] {
        let mut samples = Vec::new();
        for i in 0..n {
            std::fs::write(mp.join(format!("f{}", i % 20)), format!("change {i}")).expect("write");
            let t = Instant::now();
            let (st, body) = http(
                &d.socket,
                "POST",
                &format!("/v1/workspaces/{ws}/snapshot"),
                &format!("{{\"durability\": \"{durability}\"}}"),
            );
            samples.push(t.elapsed());
            assert_eq!(st, 201, "{body}");
            snaps.push(field(&body, "id"));
        }
        report(
            &format!("snapshot (one small file changed, {durability})"),
            samples,
            Some("p50 < 275 us"),
        );
    }

    // Checkout, alternating between two snapshots.
    let (a, b) = (snaps[0].clone(), snaps[snaps.len() - 1].clone());
    let mut samples = Vec::new();
    for i in 0..n {
        let to = if i % 2 == 0 { &a } else { &b };
        let t = Instant::now();
        let (st, body) = http(
            &d.socket,
            "POST",
            &format!("/v1/workspaces/{ws}/checkout"),
            &format!("{{\"snapshot\": \"{to}\"}}"),
        );
        samples.push(t.elapsed());
        assert_eq!(st, 200, "{body}");
    }
    report("checkout (mounted, in place)", samples, None);

    // Fork: a new workspace over a snapshot, mounted.
    let mut samples = Vec::new();
    for i in 0..n.min(100) {
        let mp = d.dir.path().join(format!("fork{i}"));
        std::fs::create_dir(&mp).expect("mkdir");
        let t = Instant::now();
        let (st, body) = http(
            &d.socket,
            "POST",
            "/v1/workspaces",
            &format!("{{\"mountpoint\": {mp:?}, \"from\": \"{b}\", \"engine\": \"fuse\"}}"),
        );
        samples.push(t.elapsed());
        assert_eq!(st, 201, "{body}");
        let id = field(&body, "id");
        let (st, _) = http(&d.socket, "DELETE", &format!("/v1/workspaces/{id}"), "");
        assert_eq!(st, 204);
    }
    report(
        "fork (including the FUSE mount)",
        samples,
        Some("p50 < 20 ms"),
    );

    engines(&d, quick);

    // 32 concurrent clients, each snapshotting its own workspace.
    let clients = if quick { 4 } else { 32 };
    let per = if quick { 3 } else { 50 };
    let spaces: Vec<(String, PathBuf)> = (0..clients)
        .map(|c| d.mount(&format!("c{c}"), Some(&b)))
        .collect();
    for durability in ["sync", "buffered"] {
        let start = Instant::now();
        std::thread::scope(|s| {
            for (id, mp) in &spaces {
                let socket = d.socket.clone();
                s.spawn(move || {
                    for i in 0..per {
                        std::fs::write(mp.join("work"), format!("{i}")).expect("write");
                        let (st, body) = http(
                            &socket,
                            "POST",
                            &format!("/v1/workspaces/{id}/snapshot"),
                            &format!("{{\"durability\": \"{durability}\"}}"),
                        );
                        assert_eq!(st, 201, "{body}");
                    }
                });
            }
        });
        let took = start.elapsed();
        println!(
            "{:<40} {} snapshots in {took:.2?} = {:.0} snapshots/s",
            format!("{clients} concurrent clients (auto, {durability})"),
            clients * per,
            (clients * per) as f64 / took.as_secs_f64()
        );
    }

    // Many mounted workspaces at once.
    let target = if quick { 8 } else { 256 };
    let start = Instant::now();
    let many: Vec<(String, PathBuf)> = (0..target)
        .map(|i| d.mount(&format!("m{i}"), Some(&b)))
        .collect();
    let took = start.elapsed();
    for (_, mp) in &many {
        std::fs::write(mp.join("alive"), "yes").expect("write in every mount");
    }
    for (_, mp) in &many {
        assert_eq!(
            std::fs::read_to_string(mp.join("alive")).expect("read"),
            "yes"
        );
    }
    let rss = std::fs::read_to_string(format!("/proc/{}/status", d.child.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .unwrap_or_default();
    println!(
        "{:<40} mounted in {took:.2?}, all read and written; daemon RSS {rss} kB (target: 256)",
        format!(
            "{} workspaces mounted at once",
            many.len() + spaces.len() + 1
        )
    );
}

/// A tree of `files` small files in directories of 100, imported; the source lives on
/// tmpfs (deleting many files on the root disk is slow here).
fn import_tree(d: &Daemon, files: usize) -> String {
    let src = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir");
    for i in 0..files {
        let dir = src.path().join(format!("d{}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir).expect("mkdir");
        }
        std::fs::write(dir.join(format!("f{i}")), format!("file {i}\n")).expect("write");
    }
    let (st, body) = http(
        &d.socket,
        "POST",
        "/v1/snapshots/import",
        &format!("{{\"path\": {:?}}}", src.path()),
    );
    assert_eq!(st, 201, "{body}");
    field(&body, "id")
}

/// Forks a workspace from `from`, waits until a file of it can be read, and removes
/// it: how long until usable, and (overlay) what its lower layer was.
fn fork_once(d: &Daemon, engine: &str, from: &str, name: &str) -> (Duration, String) {
    let fmp = d.dir.path().join(name);
    std::fs::create_dir(&fmp).expect("mkdir");
    let t = Instant::now();
    let (st, body) = http(
        &d.socket,
        "POST",
        "/v1/workspaces",
        &format!("{{\"mountpoint\": {fmp:?}, \"from\": \"{from}\", \"engine\": \"{engine}\"}}"),
    );
    assert_eq!(st, 201, "{body}");
    std::fs::metadata(fmp.join("d0/f0")).expect("usable");
    let took = t.elapsed();
    let id = field(&body, "id");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let lower = v["lower"].as_str().unwrap_or("-").to_string();
    let (st, _) = http(&d.socket, "DELETE", &format!("/v1/workspaces/{id}"), "");
    assert_eq!(st, 204);
    (took, lower)
}

/// How many forks had each kind of lower layer, e.g. "delta 48, view 2".
fn lowers(kinds: &[String]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, u32>::new();
    for k in kinds {
        *counts.entry(k.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Warms snapshot `id` (a native lower for the overlay engine) as a controller does
/// with the root of its search, so that the figures are those of the steady state and
/// not of a background build competing for the disk; prints what it cost.
fn warm(d: &Daemon, id: &str, what: &str) {
    let t = Instant::now();
    let (st, body) = http(&d.socket, "POST", &format!("/v1/snapshots/{id}/warm"), "");
    assert_eq!(st, 200, "{body}");
    println!("warm ({what}): {:.2?}  {body}", t.elapsed());
}

/// Both engines side by side over a 10k-file tree: snapshot and checkout with a few
/// changed files, and fork to a mounted workspace from a snapshot never mounted before
/// (10k and 100k files, and the tip of a long chain).
fn engines(d: &Daemon, quick: bool) {
    let n = if quick { 3 } else { 200 };
    let small = import_tree(d, if quick { 500 } else { 10_000 });
    warm(d, &small, "10k tree");
    for engine in ["fuse", "overlay"] {
        let (ws, mp) = d.mount_with(&format!("tree-{engine}"), Some(&small), engine);
        let mut snaps = Vec::new();
        let mut samples = Vec::new();
        for i in 0..n {
            for f in 0..5 {
                std::fs::write(mp.join(format!("d{f}/f{}", f * 100)), format!("{i}"))
                    .expect("write");
            }
            let t = Instant::now();
            let (st, body) = http(
                &d.socket,
                "POST",
                &format!("/v1/workspaces/{ws}/snapshot"),
                "{}",
            );
            samples.push(t.elapsed());
            assert_eq!(st, 201, "{body}");
            snaps.push(field(&body, "id"));
        }
        report(
            &format!("{engine}: snapshot (5 files changed, 10k tree)"),
            samples,
            Some("p50 <= 10 ms"),
        );
        let mut samples = Vec::new();
        for i in 0..n {
            let to = &snaps[i % 2];
            let t = Instant::now();
            let (st, body) = http(
                &d.socket,
                "POST",
                &format!("/v1/workspaces/{ws}/checkout"),
                &format!("{{\"snapshot\": \"{to}\", \"discard\": true}}"),
            );
            samples.push(t.elapsed());
            assert_eq!(st, 200, "{body}");
        }
        report(&format!("{engine}: checkout (10k tree)"), samples, None);
        // Fork from snapshots no workspace has mounted: new ones, each a step further
        // down the chain this workspace builds.
        let mut samples = Vec::new();
        let mut kinds = Vec::new();
        for i in 0..n.min(50) {
            std::fs::write(mp.join("step"), format!("{i}")).expect("write");
            let (st, body) = http(
                &d.socket,
                "POST",
                &format!("/v1/workspaces/{ws}/snapshot"),
                "{}",
            );
            assert_eq!(st, 201, "{body}");
            let from = field(&body, "id");
            let (took, lower) = fork_once(d, engine, &from, &format!("fork-{engine}-{i}"));
            samples.push(took);
            kinds.push(lower);
        }
        report(
            &format!(
                "{engine}: fork from a new snapshot (10k tree; lowers: {})",
                lowers(&kinds)
            ),
            samples,
            Some("p50 <= 5 ms"),
        );
        let (st, _) = http(&d.socket, "DELETE", &format!("/v1/workspaces/{ws}"), "");
        assert_eq!(st, 204);
    }
    if quick {
        return;
    }
    // The same at 100k files, and at the tip of a 1,000-snapshot chain.
    let big = import_tree(d, 100_000);
    let (ws, mp) = d.mount_with("chain", Some(&big), "fuse");
    let mut tip = big.clone();
    for i in 0..1000 {
        std::fs::write(mp.join("step"), format!("{i}")).expect("write");
        let (st, body) = http(
            &d.socket,
            "POST",
            &format!("/v1/workspaces/{ws}/snapshot"),
            "{}",
        );
        assert_eq!(st, 201, "{body}");
        tip = field(&body, "id");
    }
    warm(d, &big, "100k tree");
    for engine in ["fuse", "overlay"] {
        for (what, from) in [
            ("100k tree", &big),
            ("tip of a 1,000-snapshot chain, 100k tree", &tip),
        ] {
            let mut samples = Vec::new();
            let mut kinds = Vec::new();
            for i in 0..20 {
                let name = format!("big-{engine}-{}-{i}", what.len());
                let (took, lower) = fork_once(d, engine, from, &name);
                samples.push(took);
                kinds.push(lower);
            }
            report(
                &format!("{engine}: fork ({what}; lowers: {})", lowers(&kinds)),
                samples,
                Some("p50 <= 5 ms"),
            );
        }
    }
}
