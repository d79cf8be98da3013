//! Issue 11, item 5: `helios serve` as an ordinary user (uid 65534), its socket and
//! state under `$XDG_RUNTIME_DIR` and `$XDG_DATA_HOME`: workspaces are fuse ones mounted
//! through fusermount3, without passthrough, and `engine_reason` says so; the overlay
//! engine is refused with the reason; a kill -9 and a restart bring the workspace back
//! (its stale mount detached through fusermount3).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{BIN, is_mounted, unmount_under};

const NOBODY: u32 = 65534;

/// `/dev/fuse` usable by every user (0666, as distributions' udev rules make it; this
/// VM ships it 0600) while the guard lives; its mode before is restored.
struct DevFuse(u32);

impl DevFuse {
    fn open_to_all() -> DevFuse {
        let before = fs::metadata("/dev/fuse")
            .expect("/dev/fuse")
            .permissions()
            .mode()
            & 0o777;
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666))
            .expect("chmod /dev/fuse (root)");
        DevFuse(before)
    }
}

impl Drop for DevFuse {
    fn drop(&mut self) {
        if self.0 != 0o666 {
            let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
        }
    }
}

/// A daemon run as uid 65534 with its defaults under `dir`; dropping it kills it and
/// detaches what it left mounted.
struct UserDaemon {
    dir: PathBuf,
    child: Option<Child>,
}

impl UserDaemon {
    fn as_nobody(&self, program: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            program,
        ]);
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", &self.dir)
            .env("XDG_RUNTIME_DIR", self.dir.join("run"))
            .env("XDG_DATA_HOME", self.dir.join("data"));
        c
    }

    fn start(dir: &Path) -> UserDaemon {
        let mut d = UserDaemon {
            dir: dir.to_path_buf(),
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .expect("log");
        let child = self
            .as_nobody(BIN)
            .arg("serve")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("setpriv helios serve");
        self.child = Some(child);
        let start = Instant::now();
        while !self.cli(&["stats"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the daemon did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.as_nobody(BIN).args(args).output().expect("helios")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(&[&["--json"], args].concat());
        assert!(
            out.status.success(),
            "helios {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// Runs a shell command as uid 65534.
    fn sh(&self, script: &str) -> String {
        let out = self
            .as_nobody("sh")
            .args(["-c", script])
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for UserDaemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let mut c = c;
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        unmount_under(&self.dir);
    }
}

#[test]
fn an_ordinary_user_serves_fuse_workspaces_through_fusermount3() {
    let _dev = DevFuse::open_to_all();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    for d in ["run", "data", "mnt/w", "src"] {
        fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    fs::write(dir.join("src/f"), b"from the import").expect("write");
    for p in ["", "run", "data", "mnt", "mnt/w", "src", "src/f"] {
        std::os::unix::fs::chown(dir.join(p), Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    fs::set_permissions(dir.join("run"), fs::Permissions::from_mode(0o700)).expect("chmod");
    let mut d = UserDaemon::start(dir);
    assert!(
        dir.join("run/helios.sock").exists(),
        "the socket is under $XDG_RUNTIME_DIR"
    );
    assert!(
        dir.join("data/helios").is_dir(),
        "the state is under $XDG_DATA_HOME"
    );
    let s1 = d.json(&["import", dir.join("src").to_str().expect("utf-8")])["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mp = dir.join("mnt/w");
    let mps = mp.to_str().expect("utf-8");
    let ws = d.json(&["mount", mps, "--from", &s1]);
    assert_eq!(ws["engine"], "fuse", "{ws}");
    assert_eq!(ws["passthrough"], false, "{ws}");
    let reason = ws["engine_reason"].as_str().expect("reason");
    for word in ["fusermount3", "passthrough", "CAP_SYS_ADMIN"] {
        assert!(
            reason.contains(word),
            "engine_reason names {word}: {reason}"
        );
    }
    // The overlay engine, asked for: refused, with the reason.
    let other = dir.join("mnt/o");
    d.sh(&format!("mkdir {}", other.display()));
    let out = d.cli(&[
        "mount",
        other.to_str().expect("utf-8"),
        "--engine",
        "overlay",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("root"), "{err}");
    // Files as that user; snapshot, checkout in place.
    assert_eq!(d.sh(&format!("cat {mps}/f")), "from the import");
    d.sh(&format!("echo agent > {mps}/g && sync {mps}/g"));
    let s2 = d.json(&["snapshot", mps])["id"]
        .as_str()
        .expect("id")
        .to_string();
    d.json(&["checkout", mps, &s1]);
    assert!(!mp.join("g").exists());
    d.json(&["checkout", mps, &s2]);
    assert_eq!(d.sh(&format!("cat {mps}/g")), "agent\n");
    // Work fsynced, then kill -9: the restarted daemon detaches the dead mount
    // (fusermount3 -u -z) and mounts the workspace again.
    d.sh(&format!(
        "echo after > {mps}/h && python3 -c 'import os; f=os.open(\"{mps}/h\", os.O_RDONLY); os.fsync(f)'"
    ));
    d.kill9();
    d.spawn();
    let start = Instant::now();
    while d.sh(&format!("cat {mps}/h 2>/dev/null || true")) != "after\n" {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the workspace came back with its fsynced file: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = d.cli(&["unmount", mps]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mp), "unmounted through fusermount3");
}
