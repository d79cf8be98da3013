//! Issue 11, item 1: a long-lived command in a bubblewrap sandbox with a workspace
//! bind-mounted as its working directory writes files; the controller snapshots from
//! outside and checks the workspace out to other snapshots in place while the sandbox
//! runs, and the sandbox sees each switch. Both engines.

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::Daemon;

/// Kills the sandbox if the test fails while it runs.
struct Sandbox(std::process::Child);

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sandbox_follows_checkouts(engine: &str) {
    let d = Daemon::start();
    let mut snaps = Vec::new();
    let src = d.path("src");
    fs::create_dir(&src).expect("mkdir");
    for word in ["one", "two"] {
        fs::write(src.join("f"), word).expect("write");
        let s = d.json(&["import", src.to_str().expect("utf8")]);
        snaps.push(s["id"].as_str().expect("id").to_string());
    }
    let mp = d.path("ws");
    fs::create_dir(&mp).expect("mkdir");
    let mps = mp.to_str().expect("utf8");
    let ws = d.json(&["mount", mps, "--from", &snaps[0], "--engine", engine]);
    assert_eq!(ws["engine"], engine, "{ws}");
    // The sandbox: its own mount namespace (bwrap makes its mounts slaves), the
    // workspace as /work, its working directory.
    let script = "echo made inside > /work/inside && echo ready && \
                  while [ ! -e /work/stop ]; do cat /work/f; echo; sleep 0.02; done";
    let child = Command::new("bwrap")
        .args(["--bind", "/", "/", "--dev", "/dev", "--proc", "/proc"])
        .args([
            "--bind",
            mps,
            "/work",
            "--chdir",
            "/work",
            "--die-with-parent",
        ])
        .args(["sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bwrap (Debian bubblewrap; scripts/test installs it)");
    let mut child = Sandbox(child);
    let mut lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    // The sandbox prints every 20 ms: 1,500 lines without the one wanted is 30 s.
    let mut wait_for = |want: &str| {
        for line in lines.by_ref().take(1500) {
            if line.expect("line") == want {
                return;
            }
        }
        panic!("the sandbox ({engine}) never saw {want:?}");
    };
    wait_for("ready");
    wait_for("one");
    // What the sandbox wrote is in a snapshot taken from outside.
    let s = d.json(&["snapshot", mps, "--label", "from-the-sandbox"]);
    let sid = s["id"].as_str().expect("id").to_string();
    let out = d.path("export");
    d.ok(&["export", &sid, out.to_str().expect("utf8")]);
    assert_eq!(
        fs::read_to_string(out.join("inside")).expect("exported"),
        "made inside\n"
    );
    d.ok(&["checkout", mps, &snaps[1]]);
    wait_for("two");
    d.ok(&["checkout", mps, &sid]);
    wait_for("one");
    fs::write(mp.join("stop"), "").expect("stop");
    drop(lines);
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "the sandbox ended with {status}");
    d.ok(&["unmount", mps]);
}

#[test]
fn a_bwrap_sandbox_follows_checkouts_fuse() {
    sandbox_follows_checkouts("fuse");
}

#[test]
fn a_bwrap_sandbox_follows_checkouts_overlay() {
    sandbox_follows_checkouts("overlay");
}
