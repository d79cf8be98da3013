//! Issue 8, item 3: cycles of write → snapshot → fork → checkout across several
//! workspaces while another thread SIGKILLs the daemon at random moments. After every
//! restart each workspace must be at its last acknowledged state (or, for the operation
//! the kill interrupted, at the state that operation would have made); at the end every
//! acknowledged snapshot must read back by content and fsck must pass.
//!
//! `HELIOS_CRASH_CYCLES` sets the number of cycles (300 by default, a few seconds;
//! `scripts/crash-cycles` runs 3000). `HELIOS_CRASH_SEED` replays a run's operations
//! (the kills' timing differs).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Daemon;

type Tree = BTreeMap<String, Vec<u8>>;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the operation a kill may have interrupted would have made of a workspace.
enum Pending {
    None,
    Write(String, Vec<u8>),
    Delete(String),
    Checkout(Tree),
}

struct Ws {
    mp: PathBuf,
    /// The acknowledged content.
    tree: Tree,
    pending: Pending,
}

/// Every file below `dir`, by relative path.
fn read_tree(dir: &Path) -> std::io::Result<Tree> {
    let mut out = Tree::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("below")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, fs::read(&p)?);
            }
        }
    }
    Ok(out)
}

/// Names the step of a file operation that failed.
fn step(what: &'static str) -> impl Fn(std::io::Error) -> std::io::Error {
    move |e| std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Writes `path` atomically and durably: a temporary, fsync, rename, fsync the directory.
fn durable_write(root: &Path, path: &str, data: &[u8]) -> std::io::Result<()> {
    let p = root.join(path);
    let dir = p.parent().expect("parent").to_path_buf();
    if !dir.exists() {
        fs::create_dir_all(&dir).map_err(step("mkdir -p"))?;
        fs::File::open(root)
            .and_then(|r| r.sync_all())
            .map_err(step("fsync the root"))?;
    }
    let tmp = dir.join(format!(
        ".{}.tmp",
        p.file_name().expect("name").to_string_lossy()
    ));
    let mut f = fs::File::create(&tmp).map_err(step("create the temporary"))?;
    f.write_all(data).map_err(step("write"))?;
    f.sync_all().map_err(step("fsync"))?;
    drop(f);
    fs::rename(&tmp, &p).map_err(step("rename"))?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(step("fsync the directory"))
}

fn durable_delete(root: &Path, path: &str) -> std::io::Result<()> {
    let p = root.join(path);
    fs::remove_file(&p).map_err(step("unlink"))?;
    fs::File::open(p.parent().expect("parent"))
        .and_then(|d| d.sync_all())
        .map_err(step("fsync the directory"))
}

fn without_tmp(t: &Tree) -> Tree {
    t.iter()
        .filter(|(p, _)| !p.ends_with(".tmp"))
        .map(|(p, v)| (p.clone(), v.clone()))
        .collect()
}

/// Checks a workspace after a restart and adopts what it holds.
fn check_after_restart(w: &mut Ws, cycle: u64, seed: u64, log: &dyn Fn() -> String) {
    let got = read_tree(&w.mp).unwrap_or_else(|e| {
        panic!(
            "seed {seed} cycle {cycle}: {} unreadable: {e}\n{}",
            w.mp.display(),
            log()
        )
    });
    // A temporary of an interrupted write may remain; it is garbage of that write.
    let clean = without_tmp(&got);
    let ok = match &w.pending {
        Pending::None => clean == w.tree,
        Pending::Write(path, data) => {
            let mut new = w.tree.clone();
            new.insert(path.clone(), data.clone());
            clean == w.tree || clean == new
        }
        Pending::Delete(path) => {
            let mut new = w.tree.clone();
            new.remove(path);
            clean == w.tree || clean == new
        }
        Pending::Checkout(target) => clean == w.tree || clean == *target,
    };
    assert!(
        ok,
        "seed {seed} cycle {cycle}: {} after a crash:\n got {:?}\nwant {:?}\n{}",
        w.mp.display(),
        clean.keys().collect::<Vec<_>>(),
        w.tree.keys().collect::<Vec<_>>(),
        log()
    );
    for p in got.keys().filter(|p| p.ends_with(".tmp")) {
        let _ = fs::remove_file(w.mp.join(p));
    }
    w.tree = clean;
    w.pending = Pending::None;
}

#[test]
fn acknowledged_state_survives_kill_9_at_random_moments() {
    let cycles: u64 = std::env::var("HELIOS_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("HELIOS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("crash cycles: {cycles} cycles, HELIOS_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let mut d = Daemon::start_args(&["--journal-interval", "0.3"]);
    let mut spaces: Vec<Ws> = Vec::new();
    for i in 0..3 {
        let mp = d.path(&format!("ws{i}"));
        // Both engines, side by side in one daemon.
        let engine = ["fuse", "overlay"][i % 2];
        d.json(&["mount", mp.to_str().expect("utf8"), "--engine", engine]);
        spaces.push(Ws {
            mp,
            tree: Tree::new(),
            pending: Pending::None,
        });
    }
    let mut snaps: Vec<(String, Tree)> = Vec::new();

    // The killer: SIGKILL at random moments while the daemon is up. The pid is cleared
    // (under the lock) before the dead daemon is reaped, so a reused pid is never hit.
    let pid: Arc<Mutex<Option<i32>>> = Arc::new(Mutex::new(d.pid()));
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let killer = {
        let (pid, stop, kills) = (pid.clone(), stop.clone(), kills.clone());
        let mut krng = Rng(seed.rotate_left(17) | 1);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10 + krng.below(150)));
                let guard = pid.lock().expect("lock");
                if let Some(p) = *guard
                    && !stop.load(Ordering::SeqCst)
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    kills.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    let mut restarts = 0u64;
    // Mountpoints of forks: a fresh one per attempt (an interrupted fork may have made
    // its workspace and mounted it again at the restart).
    let mut next_mp = spaces.len();
    let mut cycle = 0u64;
    // The operations so far, for the message of a failure.
    let mut trace: Vec<String> = Vec::new();
    let tail = |t: &[String]| t[t.len().saturating_sub(30)..].join("\n");
    while cycle < cycles {
        let mut desc = String::new();
        let k = rng.below(spaces.len() as u64) as usize;
        let choice = rng.below(100);
        let m = spaces[k].mp.to_str().expect("utf8").to_string();
        // Run one operation; Err(()) means it failed (the daemon may have died).
        let result: Result<(), String> = if choice < 50 {
            let path = ["a", "b", "d/c", "d/e", "f/g/h"][rng.below(5) as usize].to_string();
            let len = 1 + rng.below(6000) as usize;
            let data: Vec<u8> = (0..len).map(|i| (cycle as usize + i * 31) as u8).collect();
            desc = format!("write {m}/{path}");
            spaces[k].pending = Pending::Write(path.clone(), data.clone());
            match durable_write(&spaces[k].mp, &path, &data) {
                Ok(()) => {
                    spaces[k].tree.insert(path, data);
                    Ok(())
                }
                Err(e) => Err(format!("write {m}/{path}: {e}")),
            }
        } else if choice < 57 && !spaces[k].tree.is_empty() {
            let n = rng.below(spaces[k].tree.len() as u64) as usize;
            let path = spaces[k].tree.keys().nth(n).expect("path").clone();
            desc = format!("delete {m}/{path}");
            spaces[k].pending = Pending::Delete(path.clone());
            match durable_delete(&spaces[k].mp, &path) {
                Ok(()) => {
                    spaces[k].tree.remove(&path);
                    Ok(())
                }
                Err(e) => Err(format!("delete {m}/{path}: {e}")),
            }
        } else if choice < 80 {
            let out = d.cli(&["--json", "snapshot", &m]);
            desc = format!("snapshot {m}");
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
                let id = v["id"].as_str().expect("id").to_string();
                desc = format!("snapshot {m} -> {id}");
                snaps.push((id, spaces[k].tree.clone()));
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        } else if choice < 92 && !snaps.is_empty() {
            let (id, target) = snaps[rng.below(snaps.len() as u64) as usize].clone();
            desc = format!("checkout {m} {id}");
            spaces[k].pending = Pending::Checkout(target.clone());
            let out = d.cli(&["checkout", &m, &id, "--discard"]);
            if out.status.success() {
                spaces[k].tree = target;
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        } else if !snaps.is_empty() && spaces.len() < 6 {
            let (id, target) = snaps[rng.below(snaps.len() as u64) as usize].clone();
            let mp = d.path(&format!("ws{next_mp}"));
            next_mp += 1;
            let engine = ["fuse", "overlay"][next_mp % 2];
            desc = format!("fork {id} at {} ({engine})", mp.display());
            let out = d.cli(&[
                "--json",
                "mount",
                mp.to_str().expect("utf8"),
                "--from",
                &id,
                "--engine",
                engine,
            ]);
            if out.status.success() {
                spaces.push(Ws {
                    mp,
                    tree: target,
                    pending: Pending::None,
                });
                Ok(())
            } else {
                // A fork the kill interrupted may exist or not; it is not ours to check.
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        } else {
            Ok(())
        };
        if !desc.is_empty() {
            trace.push(format!(
                "{cycle}: {desc}: {}",
                result.as_ref().map_or_else(|e| e.trim(), |()| "ok")
            ));
        }
        match result {
            Ok(()) => {
                spaces[k].pending = Pending::None;
                cycle += 1;
            }
            Err(e) => {
                // Only a dead daemon may fail an operation.
                let dead = {
                    let mut guard = pid.lock().expect("lock");
                    std::thread::sleep(Duration::from_millis(50));
                    let dead = d.exited();
                    if dead {
                        *guard = None;
                    }
                    dead
                };
                assert!(
                    dead,
                    "seed {seed} cycle {cycle}: an operation failed with the daemon alive: {e}\n{}\noperations:\n{}",
                    d.log(),
                    tail(&trace)
                );
                restarts += 1;
                trace.push(format!("{cycle}: restart"));
                d.spawn();
                for w in &mut spaces {
                    check_after_restart(w, cycle, seed, &|| {
                        format!("{}\noperations:\n{}", d.log(), tail(&trace))
                    });
                }
                *pid.lock().expect("lock") = d.pid();
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    *pid.lock().expect("lock") = None;
    killer.join().expect("killer");
    if d.exited() {
        d.spawn();
        for w in &mut spaces {
            check_after_restart(w, cycle, seed, &|| {
                format!("{}\noperations:\n{}", d.log(), tail(&trace))
            });
        }
    }
    eprintln!(
        "crash cycles: {restarts} restarts after {} kills, {} snapshots",
        kills.load(Ordering::SeqCst),
        snaps.len()
    );
    // Every acknowledged snapshot, by content.
    for (i, (id, want)) in snaps.iter().enumerate() {
        let out = d.path(&format!("export-{i}"));
        d.ok(&["export", id, out.to_str().expect("utf8")]);
        assert_eq!(
            &read_tree(&out).expect("export"),
            want,
            "seed {seed}: snapshot {id}"
        );
    }
    for w in &spaces {
        assert_eq!(
            without_tmp(&read_tree(&w.mp).expect("read")),
            w.tree,
            "seed {seed}: {}",
            w.mp.display()
        );
    }
    let fsck = d.ok(&["fsck"]);
    assert!(fsck.starts_with("ok"), "seed {seed}: {fsck}");
    assert!(d.stop().success(), "{}", d.log());
}
