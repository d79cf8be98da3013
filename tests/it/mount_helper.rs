//! `mount -t helios SNAPSHOT DIR` through mount(8) and the `mount.helios` helper (the
//! helios binary under that name in /sbin), an fstab line, and `umount DIR` dropping
//! the workspace, on both engines (the overlay one after a checkout, with two mounts
//! stacked at the mountpoint).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{BIN, Daemon, is_mounted};

/// `/sbin/mount.helios` pointing at the binary under test while the guard lives (one
/// test at a time: they share that path).
struct Helper(
    PathBuf,
    #[allow(dead_code)] std::sync::MutexGuard<'static, ()>,
);

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Helper {
    fn install() -> Helper {
        let one = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let p = PathBuf::from("/sbin/mount.helios");
        if std::fs::symlink_metadata(&p).is_ok() {
            std::fs::remove_file(&p).expect("remove an older mount.helios");
        }
        std::os::unix::fs::symlink(BIN, &p).expect("install /sbin/mount.helios (root)");
        Helper(p, one)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sh(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn workspaces_at(d: &Daemon, dir: &Path) -> Vec<serde_json::Value> {
    let dir = dir.canonicalize().unwrap_or(dir.to_path_buf());
    d.json(&["ls"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|w| w["mountpoint"].as_str() == Some(&*dir.to_string_lossy()))
        .collect()
}

/// Waits until no workspace is at `dir` and nothing is mounted there.
fn wait_dropped(d: &Daemon, dir: &Path) {
    let start = Instant::now();
    while !workspaces_at(d, dir).is_empty() || is_mounted(dir) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the workspace at {} was not dropped after umount: {}",
            dir.display(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mount_t_helios_and_umount_on_both_engines() {
    let _helper = Helper::install();
    let d = Daemon::start();
    let src = d.path("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("hello"), b"from the snapshot").expect("write");
    let s1 = d.json(&["import", src.to_str().expect("utf-8")])["id"]
        .as_str()
        .expect("id")
        .to_string();
    let socket = d.socket.display().to_string();
    for engine in ["fuse", "overlay"] {
        let dir = d.path(&format!("m-{engine}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (code, out) = sh(Command::new("mount").args([
            "-t",
            "helios",
            "-o",
            &format!("engine={engine},socket={socket}"),
            &s1,
            dir.to_str().expect("utf-8"),
        ]));
        assert_eq!(code, 0, "mount -t helios: {out}");
        assert_eq!(
            std::fs::read(dir.join("hello")).expect("read"),
            b"from the snapshot"
        );
        let ws = workspaces_at(&d, &dir);
        assert_eq!(ws.len(), 1, "{ws:?}");
        assert_eq!(ws[0]["engine"], engine);
        assert_eq!(ws[0]["drop_on_unmount"], true);
        let id = ws[0]["id"].as_str().expect("id").to_string();
        // Work in it, snapshot from outside, check out in place (the overlay engine
        // then has two mounts stacked there; `umount` removes the top one only).
        std::fs::write(dir.join("new"), b"agent").expect("write");
        let s2 = d.json(&["snapshot", &id])["id"]
            .as_str()
            .expect("id")
            .to_string();
        d.ok(&["checkout", &id, &s1, "--discard"]);
        assert!(!dir.join("new").exists());
        d.ok(&["checkout", &id, &s2]);
        assert_eq!(std::fs::read(dir.join("new")).expect("read"), b"agent");
        let (code, out) = sh(Command::new("umount").arg(&dir));
        assert_eq!(code, 0, "umount: {out}");
        wait_dropped(&d, &dir);
        // The snapshot taken while it lived stays.
        let exported = d.path(&format!("export-{engine}"));
        d.ok(&["export", &s2, exported.to_str().expect("utf-8")]);
        assert_eq!(std::fs::read(exported.join("new")).expect("read"), b"agent");
    }
}

#[test]
fn an_fstab_line_mounts_an_empty_workspace() {
    let _helper = Helper::install();
    let d = Daemon::start();
    let dir = d.path("fstab-mnt");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let fstab = d.path("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# helios\nempty {} helios engine=fuse,socket={},noauto,nofail 0 0\n",
            dir.display(),
            d.socket.display()
        ),
    )
    .expect("fstab");
    let (code, out) = sh(Command::new("mount").arg("--fstab").arg(&fstab).arg(&dir));
    assert_eq!(code, 0, "mount --fstab: {out}");
    assert!(is_mounted(&dir));
    std::fs::write(dir.join("f"), b"x").expect("write into the empty workspace");
    assert_eq!(workspaces_at(&d, &dir).len(), 1);
    let (code, out) = sh(Command::new("umount").arg(&dir));
    assert_eq!(code, 0, "umount: {out}");
    wait_dropped(&d, &dir);
}

#[test]
fn mount_t_helios_refuses_bad_input_clearly() {
    let _helper = Helper::install();
    let d = Daemon::start();
    let dir = d.path("bad");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let socket = format!("socket={}", d.socket.display());
    let dir_s = dir.to_str().expect("utf-8");
    let cases: [(&[&str], &str); 3] = [
        (&["-o", &socket, "s999", dir_s], "s999"),
        (
            &["-o", &format!("{socket},size=1g"), "empty", dir_s],
            "size=1g",
        ),
        (
            &["-o", &format!("{socket},engine=zfs"), "empty", dir_s],
            "zfs",
        ),
    ];
    for (args, named) in cases {
        let (code, out) = sh(Command::new("mount").args(["-t", "helios"]).args(args));
        assert_ne!(code, 0, "{args:?} must fail: {out}");
        assert!(
            out.contains(named),
            "{args:?}: the error names {named:?}: {out}"
        );
        assert!(!is_mounted(&dir), "nothing mounted after {args:?}");
    }
    assert!(workspaces_at(&d, &dir).is_empty());
    // A daemon that is not there.
    let (code, out) = sh(Command::new("mount").args([
        "-t",
        "helios",
        "-o",
        "socket=/nonexistent/helios.sock",
        "empty",
        dir_s,
    ]));
    assert_eq!(code, 32, "{out}");
    assert!(out.contains("/nonexistent/helios.sock"), "{out}");
}
