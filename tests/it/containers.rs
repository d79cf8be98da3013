//! Issue 11, item 2: real containers over helios workspaces. containerd 1.6 + runc 1.1
//! (a containerd of the test's own, with a temporary config, root, state and socket;
//! `ctr run --rootfs`) and podman 4.3 (`--rootfs`, temporary root and runroot). Each
//! container runs a long-lived command with a workspace bind-mounted at /work (`rslave`
//! propagation: the overlay engine's checkouts are new mounts on the workspace's shared
//! anchor); the test writes through it from inside, snapshots from outside while it
//! runs, checks the workspace out in place twice, and execs into the container to see
//! each switch. containerd also runs one container whose root filesystem is a fuse
//! workspace, checked out in place under it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Daemon, unmount_under};

pub(super) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` for up to 30 s.
pub(super) fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A root filesystem of busybox (Debian `busybox-static`; `scripts/test` installs it).
fn busybox_tree(dir: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "work", "etc"] {
        fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .expect("/bin/busybox (Debian busybox-static)");
    for applet in ["sh", "sleep", "cat", "echo", "ls", "test", "["] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).expect("symlink");
    }
}

/// Snapshots s1 (`marker` = one) and s2 (two), and a workspace over s1 at `name`.
fn workspace(
    d: &Daemon,
    engine: &str,
    name: &str,
    with_busybox: bool,
) -> (PathBuf, String, String) {
    let src = d.path(&format!("src-{name}"));
    fs::create_dir_all(&src).expect("mkdir");
    if with_busybox {
        busybox_tree(&src);
    }
    let mut snaps = Vec::new();
    for word in ["one", "two"] {
        fs::write(src.join("marker"), word).expect("write");
        let s = d.json(&["import", src.to_str().expect("utf-8")]);
        snaps.push(s["id"].as_str().expect("id").to_string());
    }
    let mp = d.path(name);
    fs::create_dir_all(&mp).expect("mkdir");
    let ws = d.json(&[
        "mount",
        mp.to_str().expect("utf-8"),
        "--from",
        &snaps[0],
        "--engine",
        engine,
    ]);
    assert_eq!(ws["engine"], engine, "{ws}");
    (mp, snaps[0].clone(), snaps[1].clone())
}

/// The controller's part, the same for every runtime: waits for what the container
/// wrote, snapshots it from outside, and checks the workspace out in place twice,
/// asking the container (through `seen`) what it sees at `marker` each time.
fn drive(d: &Daemon, mp: &Path, s1: &str, s2: &str, mut seen: impl FnMut() -> String) {
    let mps = mp.to_str().expect("utf-8");
    eventually("the container's write", || mp.join("inside").exists());
    assert_eq!(seen(), "one");
    let snap = d.json(&["snapshot", mps, "--label", "from-the-container"]);
    let sid = snap["id"].as_str().expect("id").to_string();
    let out = d.path(&format!("export-{sid}"));
    d.ok(&["export", &sid, out.to_str().expect("utf-8")]);
    assert_eq!(
        fs::read_to_string(out.join("inside")).expect("exported"),
        "made inside\n"
    );
    d.ok(&["checkout", mps, s2]);
    assert_eq!(seen(), "two", "the container sees the checkout");
    d.ok(&["checkout", mps, &sid]);
    assert_eq!(seen(), "one");
    let _ = s1;
}

/// A containerd of the test's own; dropping it kills its containers and itself.
pub(super) struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    child: Child,
    containers: Vec<String>,
}

impl Containerd {
    fn start(dir: PathBuf) -> Containerd {
        Containerd::start_with(dir, "")
    }

    /// With `extra` appended to its config (a proxy plugin).
    pub(super) fn start_with(dir: PathBuf, extra: &str) -> Containerd {
        fs::create_dir_all(&dir).expect("mkdir");
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\n[grpc]\n  address = {:?}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable = true\n{extra}",
                dir.join("root"),
                dir.join("state"),
                socket
            ),
        )
        .expect("config");
        let log = fs::File::create(dir.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian containerd; scripts/test installs it)");
        let c = Containerd {
            dir,
            socket,
            child,
            containers: Vec::new(),
        };
        eventually("containerd's socket", || {
            Command::new("ctr")
                .arg("--address")
                .arg(&c.socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        c
    }

    pub(super) fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.socket);
        c
    }

    /// Starts a container in the background over `rootfs`, `bind` at /work if given.
    fn run(&mut self, id: &str, rootfs: &Path, bind: Option<&Path>, script: &str) {
        let mut c = self.ctr();
        c.args(["run", "-d"]);
        if let Some(b) = bind {
            c.arg("--mount").arg(format!(
                "type=bind,src={},dst=/work,options=rbind:rslave",
                b.display()
            ));
        }
        c.arg("--rootfs")
            .arg(rootfs)
            .arg(id)
            .args(["/bin/sh", "-c", script]);
        run(&mut c);
        self.containers.push(id.to_string());
    }

    fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> String {
        run(self
            .ctr()
            .args(["task", "exec", "--exec-id", exec_id, id])
            .args(args))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = self.ctr().args(["task", "kill", "-s", "KILL", id]).output();
            std::thread::sleep(Duration::from_millis(200));
            let _ = self.ctr().args(["task", "rm", "-f", id]).output();
            let _ = self.ctr().args(["container", "rm", id]).output();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_under(&self.dir);
    }
}

const SCRIPT: &str = "echo made inside > /work/inside; while true; do sleep 1; done";

#[test]
fn containerd_runs_over_workspaces_and_sees_checkouts() {
    let d = Daemon::start();
    let rootfs = d.path("rootfs");
    busybox_tree(&rootfs);
    let mut ctrd = Containerd::start(d.path("containerd"));
    for engine in ["fuse", "overlay"] {
        let (mp, s1, s2) = workspace(&d, engine, &format!("work-{engine}"), false);
        let id = format!("helios-{engine}");
        ctrd.run(&id, &rootfs, Some(&mp), SCRIPT);
        let mut n = 0;
        drive(&d, &mp, &s1, &s2, || {
            n += 1;
            ctrd.exec(&id, &format!("e{n}"), &["/bin/cat", "/work/marker"])
        });
    }
    // A fuse workspace as the container's root filesystem, switched under it.
    let (root_ws, _s1, s2) = workspace(&d, "fuse", "root-ws", true);
    fs::create_dir_all(root_ws.join("work")).expect("mkdir");
    ctrd.run(
        "helios-root",
        &root_ws,
        None,
        "echo made inside > /inside; while true; do sleep 1; done",
    );
    eventually("the container's write", || root_ws.join("inside").exists());
    assert_eq!(
        ctrd.exec("helios-root", "r1", &["/bin/cat", "/marker"]),
        "one"
    );
    let snap = d.json(&["snapshot", root_ws.to_str().expect("utf-8")]);
    let sid = snap["id"].as_str().expect("id").to_string();
    let out = d.path("export-root");
    d.ok(&["export", &sid, out.to_str().expect("utf-8")]);
    assert!(out.join("inside").exists() && out.join("bin/busybox").exists());
    d.ok(&["checkout", root_ws.to_str().expect("utf-8"), &s2]);
    assert_eq!(
        ctrd.exec("helios-root", "r2", &["/bin/cat", "/marker"]),
        "two",
        "the container sees its root filesystem checked out"
    );
}

/// podman with its storage in the test's directory; dropping it removes the container.
struct Podman {
    dir: PathBuf,
    name: String,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        c
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["rm", "-f", "-t", "0", &self.name])
            .output();
        // conmon starts `podman container cleanup` on its own when the container exits,
        // which may mount the storage again after the unmount below: wait for every
        // podman process of this root to end first (a leaked overlay mount was seen).
        let root = self.dir.join("root");
        let deadline = Instant::now() + Duration::from_secs(10);
        while podman_of(&root) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        unmount_under(&self.dir);
    }
}

/// True while a process runs with `root` on its command line (podman of that root).
fn podman_of(root: &Path) -> bool {
    let needle = root.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|cmd| cmd.windows(needle.len()).any(|w| w == needle))
}

#[test]
fn podman_runs_over_workspaces_and_sees_checkouts() {
    let d = Daemon::start();
    let rootfs = d.path("rootfs");
    busybox_tree(&rootfs);
    for engine in ["fuse", "overlay"] {
        let (mp, s1, s2) = workspace(&d, engine, &format!("work-{engine}"), false);
        let p = Podman {
            dir: d.path(&format!("podman-{engine}")),
            name: format!("helios-{engine}"),
        };
        // Explicit limits: podman's defaults raise RLIMIT_NPROC and RLIMIT_NOFILE above
        // this VM's hard limits, and its root lacks CAP_SYS_RESOURCE.
        run(p
            .cmd()
            .args(["run", "-d", "--name", &p.name, "--network", "none"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .arg("--mount")
            .arg(format!(
                "type=bind,src={},dst=/work,bind-propagation=rslave",
                mp.display()
            ))
            .arg("--rootfs")
            .arg(&rootfs)
            .args(["/bin/sh", "-c", SCRIPT]));
        drive(&d, &mp, &s1, &s2, || {
            run(p.cmd().args(["exec", &p.name, "/bin/cat", "/work/marker"]))
        });
    }
}
