//! Integration tests: a real `helios serve` on a temporary socket and state directory,
//! driven through the CLI and through raw HTTP, with real FUSE mounts.

mod api;
mod containers;
mod crash_cycles;
mod durability;
mod hostile;
mod lifecycle;
mod mcts;
mod merge;
mod mount_helper;
mod ops;
mod overlay;
mod rootless;
mod sandbox;
mod snapshotter;
mod soak;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_helios");

/// A running daemon; dropping it stops it (SIGTERM, then SIGKILL) and detaches any mount
/// left under its directory, so a failing test leaves nothing behind.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    /// Extra arguments of `helios serve`.
    pub serve_args: Vec<String>,
    /// Extra environment of `helios serve` (kept for restarts).
    pub serve_env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Daemon {
    pub fn start() -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        Daemon::start_in(dir, state, &[])
    }

    /// A daemon whose state directory is `state` (on another filesystem, say).
    pub fn start_with_state(state: PathBuf) -> Daemon {
        Daemon::start_in(tempfile::tempdir().expect("tempdir"), state, &[])
    }

    /// A daemon started with extra `serve` arguments (kept for restarts).
    pub fn start_args(args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        Daemon::start_in(dir, state, args)
    }

    fn start_in(dir: tempfile::TempDir, state: PathBuf, args: &[&str]) -> Daemon {
        let socket = dir.path().join("helios.sock");
        let mut d = Daemon {
            dir,
            socket,
            state,
            serve_args: args.iter().map(|a| a.to_string()).collect(),
            serve_env: Vec::new(),
            child: None,
        };
        d.spawn();
        d
    }

    /// Starts the daemon process (again) on the same socket and state.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("log");
        let child = Command::new(BIN)
            .args(["serve", "--state-dir"])
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.serve_args)
            .envs(self.serve_env.iter().map(|(k, v)| (k, v)))
            // HELIOS_TEST_LOG: the daemons' log filter, for a failure being chased.
            .env(
                "RUST_LOG",
                std::env::var("HELIOS_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn helios serve");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok((200, _)) = self.try_http("GET", "/v1/health", None) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not come up: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// SIGTERM and wait: the graceful path. Returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("kill");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("daemon did not stop on SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the crash path.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("wait");
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// True when the daemon process has exited (it is reaped and forgotten then).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) | None => {
                self.child = None;
                true
            }
            _ => false,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run helios")
    }

    /// Runs the CLI, expects success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "helios {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI with --json, expects success, returns the JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }

    pub fn try_http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, Value)> {
        http(&self.socket, method, path, body)
    }

    /// Raw HTTP/1.1 over the socket.
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.try_http(method, path, body).expect("http")
    }
}

/// One HTTP/1.1 request over a Unix socket, written by hand (no client library).
pub fn http(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, Value)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: helios\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A server may answer (413) and close before reading a large body: read the answer.
    if let Err(e) = s.write_all(request.as_bytes())
        && e.kind() != std::io::ErrorKind::BrokenPipe
        && e.kind() != std::io::ErrorKind::ConnectionReset
    {
        return Err(e);
    }
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(e);
    }
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let payload = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let value =
        serde_json::from_str(payload).unwrap_or_else(|_| Value::String(payload.to_string()));
    Ok((status, value))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.stop();
            }));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Detach anything still mounted below the test directory.
        unmount_under(self.dir.path());
    }
}

/// Detaches every mount under `dir`, deepest first (a test's leftovers).
pub fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mps: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    mps.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in mps {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// True when `path` is a mount point now.
pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}
