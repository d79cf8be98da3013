//! Issue 11, item 3: helios as containerd's snapshotter. A real containerd 1.6 of the
//! test's own with helios as a proxy plugin (`serve --snapshotter-socket`): snapshots
//! prepared, mounted the way containerd mounts them, committed, viewed read-only,
//! labelled, kept across a restart of the daemon, refused removal while they have
//! children, removed; then an image archive the test builds (two layers, the second
//! with a whiteout) is imported and unpacked into helios snapshots and a container runs
//! over them.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::Daemon;
use super::containers::{Containerd, eventually, run};

/// Builds an OCI image archive of busybox (Debian `busybox-static`): `python3 - OUT NAME`.
const MKIMAGE: &str = r#"
# Builds an OCI image archive of busybox: python3 mkimage.py OUT.tar NAME
import hashlib, io, json, os, sys, tarfile, gzip
out, name = sys.argv[1], sys.argv[2]
def add(t, path, data=None, mode=0o644, kind=tarfile.REGTYPE, link=""):
    ti = tarfile.TarInfo(path); ti.mode = mode; ti.type = kind; ti.linkname = link; ti.mtime = 0
    if data is not None: ti.size = len(data)
    t.addfile(ti, io.BytesIO(data) if data is not None else None)
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"]:
        add(t, d, kind=tarfile.DIRTYPE, mode=0o755)
    add(t, "bin/busybox", open("/bin/busybox", "rb").read(), mode=0o755)
    for a in ["sh", "cat", "echo", "ls", "sleep"]:
        add(t, "bin/" + a, kind=tarfile.SYMTYPE, link="busybox")
    add(t, "etc/hello", b"from the image\n")
raw = layer.getvalue()
# A second layer: deletes etc/hello (an OCI whiteout) and adds etc/second.
layer2 = io.BytesIO()
with tarfile.open(fileobj=layer2, mode="w", format=tarfile.PAX_FORMAT) as t:
    add(t, "etc", kind=tarfile.DIRTYPE, mode=0o755)
    add(t, "etc/.wh.hello", b"")
    add(t, "etc/second", b"from the second layer\n")
raw2 = layer2.getvalue()
gz = gzip.compress(raw, mtime=0)
gz2 = gzip.compress(raw2, mtime=0)
def sha(b): return "sha256:" + hashlib.sha256(b).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
    "rootfs": {"type": "layers", "diff_ids": [sha(raw), sha(raw2)]}}).encode()
layer_desc = lambda b: {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(b), "size": len(b)}
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
    "layers": [layer_desc(gz), layer_desc(gz2)]}).encode()
index = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": sha(manifest), "size": len(manifest),
    "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "latest"}}]}).encode()
with tarfile.open(out, "w") as t:
    add(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    add(t, "index.json", index)
    add(t, "blobs", kind=tarfile.DIRTYPE, mode=0o755)
    add(t, "blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755)
    for b in [config, manifest, gz, gz2]:
        add(t, "blobs/sha256/" + hashlib.sha256(b).hexdigest(), b)
"#;

fn mount_as_containerd(mount_cmd: &str) {
    // `ctr snapshots mounts TARGET KEY` prints the mount(8) command containerd performs.
    assert!(mount_cmd.starts_with("mount -t bind "), "{mount_cmd}");
    run(Command::new("sh").arg("-c").arg(mount_cmd));
}

fn umount(target: &Path) {
    run(Command::new("umount").arg(target));
}

#[test]
fn containerd_keeps_its_snapshots_in_helios_and_runs_an_image_over_them() {
    let sockets = tempfile::tempdir().expect("tempdir");
    let ss = sockets.path().join("snapshotter.sock");
    let ss_str = ss.to_str().expect("utf-8").to_string();
    let mut d = Daemon::start_args(&["--snapshotter-socket", &ss_str]);
    eventually("the snapshotter's socket", || ss.exists());
    let ctrd = Containerd::start_with(
        d.path("containerd"),
        // containerd's garbage collection (which would take the view: ctr roots what it
        // prepares, not views) runs only when the test asks for it.
        &format!(
            "[plugins.\"io.containerd.gc.v1.scheduler\"]\n  startup_delay = \"1h\"\n  \
             mutation_threshold = 1000000\n[proxy_plugins.helios]\n  type = \"snapshot\"\n  \
             address = {ss_str:?}\n"
        ),
    );
    let sn = |args: &[&str]| {
        run(ctrd
            .ctr()
            .args(["snapshots", "--snapshotter", "helios"])
            .args(args))
    };
    let target = d.path("target");
    fs::create_dir_all(&target).expect("mkdir");
    let t = target.to_str().expect("utf-8");

    // An active snapshot over nothing: mounted as containerd would, written, committed.
    sn(&["prepare", "k1", ""]);
    mount_as_containerd(sn(&["mounts", t, "k1"]).trim());
    fs::write(target.join("hello"), "hi\n").expect("write");
    umount(&target);
    sn(&["commit", "c1", "k1"]);
    let ls = sn(&["ls"]);
    assert!(ls.contains("c1") && ls.contains("Committed"), "{ls}");
    assert!(
        !ls.contains("k1"),
        "a commit ends the active snapshot: {ls}"
    );
    let log = d.json(&["log"]);
    let committed = log
        .as_array()
        .expect("log")
        .iter()
        // containerd hands its snapshotters keys of its own: namespace/id/name.
        .find(|s| s["label"].as_str().is_some_and(|l| l.ends_with("/c1")))
        .unwrap_or_else(|| panic!("no helios snapshot labelled .../c1: {log}"));
    let out = d.path("export-c1");
    d.ok(&[
        "export",
        committed["id"].as_str().expect("id"),
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        fs::read_to_string(out.join("hello")).expect("exported"),
        "hi\n"
    );

    // Children of it: an active one and a read-only view.
    sn(&["prepare", "k2", "c1"]);
    sn(&["view", "v1", "c1"]);
    let view_mount = sn(&["mounts", t, "v1"]);
    assert!(view_mount.contains("ro"), "{view_mount}");
    mount_as_containerd(view_mount.trim());
    assert_eq!(
        fs::read_to_string(target.join("hello")).expect("read"),
        "hi\n"
    );
    let err = fs::write(target.join("no"), "x").expect_err("a view is read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    umount(&target);
    sn(&["label", "c1", "team=agents"]);
    let info = sn(&["info", "c1"]);
    assert!(info.contains("\"team\": \"agents\""), "{info}");
    let usage = sn(&["usage", "k2"]);
    assert!(usage.contains("k2"), "{usage}");

    // A restart of the daemon keeps containerd's snapshots and their mounts.
    assert!(d.stop().success(), "{}", d.log());
    d.spawn();
    eventually("the snapshotter's socket again", || {
        ctrd.ctr()
            .args(["snapshots", "--snapshotter", "helios", "ls"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let ls = sn(&["ls"]);
    for key in ["c1", "k2", "v1"] {
        assert!(ls.contains(key), "{key} after a restart: {ls}");
    }
    mount_as_containerd(sn(&["mounts", t, "k2"]).trim());
    assert_eq!(
        fs::read_to_string(target.join("hello")).expect("read"),
        "hi\n"
    );
    fs::write(target.join("more"), "k2's own\n").expect("write");
    umount(&target);

    // A parent is removed only after its children; the workspaces go with them.
    let refused = ctrd
        .ctr()
        .args(["snapshots", "--snapshotter", "helios", "rm", "c1"])
        .output()
        .expect("ctr");
    assert!(!refused.status.success(), "c1 has children");
    sn(&["rm", "k2", "v1"]);
    sn(&["rm", "c1"]);
    let ls = sn(&["ls"]);
    assert!(!ls.contains("c1") && !ls.contains("k2"), "{ls}");

    // An image: imported and unpacked into helios snapshots, a container run over them.
    let image = d.path("hbox.tar");
    let mut py = Command::new("python3");
    py.arg("-")
        .arg(&image)
        .arg("docker.io/library/hbox:latest")
        .stdin(std::process::Stdio::piped());
    let mut child = py.spawn().expect("python3");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(MKIMAGE.as_bytes())
            .expect("script");
    }
    assert!(child.wait().expect("python3").success(), "image built");
    run(ctrd
        .ctr()
        .args(["images", "import", "--snapshotter", "helios"])
        .arg(&image));
    let ls = sn(&["ls"]);
    let layers: Vec<&str> = ls.lines().filter(|l| l.contains("Committed")).collect();
    assert_eq!(layers.len(), 2, "a committed snapshot per layer: {ls}");
    assert!(
        layers.iter().any(|l| l.split_whitespace().count() == 3),
        "the second layer's parent is the first: {ls}"
    );
    let said = run(ctrd.ctr().args([
        "run",
        "--rm",
        "--snapshotter",
        "helios",
        "docker.io/library/hbox:latest",
        "hbox-1",
        "/bin/sh",
        "-c",
        "cat /etc/second; ls /etc; echo written > /tmp/x; cat /tmp/x",
    ]));
    // The second layer's whiteout took the first's file away.
    assert_eq!(said, "from the second layer\nsecond\nwritten\n");

    // containerd removes its snapshotters' snapshots in its garbage collection (Walk,
    // then Remove of what it no longer references); a synchronous image removal runs
    // it: the workspaces of k2, v1 and the container go, and the records with them.
    run(ctrd
        .ctr()
        .args(["images", "rm", "--sync", "docker.io/library/hbox:latest"]));
    eventually("the snapshotter's workspaces gone", || {
        d.json(&["ls"]).as_array().is_some_and(Vec::is_empty)
    });
    let records = sn(&["ls"]);
    assert!(!records.contains("sha256:"), "{records}");
}

/// The snapshotter's own answers to bad requests, straight over gRPC (containerd's
/// metadata layer would catch most of them before they reach a snapshotter): each a
/// clear gRPC code and message, and nothing changed by the refused call.
#[test]
fn the_snapshotter_answers_bad_requests_with_grpc_codes() {
    use containerd_snapshots::api::snapshots::v1::*;
    use containerd_snapshots::tonic::Code;

    let sockets = tempfile::tempdir().expect("tempdir");
    let ss = sockets.path().join("snapshotter.sock");
    let ss_str = ss.to_str().expect("utf-8").to_string();
    let mut d = Daemon::start_args(&["--snapshotter-socket", &ss_str]);
    eventually("the snapshotter's socket", || ss.exists());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = client(ss.clone()).await;
        let sn = "helios".to_string();
        fn code<T>(r: Result<T, containerd_snapshots::tonic::Status>) -> Code {
            match r {
                Ok(_) => panic!("accepted"),
                Err(s) => {
                    assert!(!s.message().is_empty(), "a message for {:?}", s.code());
                    s.code()
                }
            }
        }
        let prepare = |key: &str, parent: &str| PrepareSnapshotRequest {
            snapshotter: sn.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: Default::default(),
        };
        c.prepare(prepare("a", "")).await.expect("prepare a");
        assert_eq!(code(c.prepare(prepare("a", "")).await), Code::AlreadyExists);
        assert_eq!(code(c.prepare(prepare("b", "nope")).await), Code::NotFound);
        assert_eq!(
            code(c.prepare(prepare("b", "a")).await),
            Code::FailedPrecondition,
            "an active parent"
        );
        assert_eq!(
            code(c.prepare(prepare("", "")).await),
            Code::InvalidArgument
        );
        let commit = |name: &str, key: &str| CommitSnapshotRequest {
            snapshotter: sn.clone(),
            name: name.into(),
            key: key.into(),
            labels: Default::default(),
        };
        assert_eq!(code(c.commit(commit("x", "nope")).await), Code::NotFound);
        c.commit(commit("A", "a")).await.expect("commit");
        assert_eq!(
            code(c.commit(commit("A2", "a")).await),
            Code::NotFound,
            "a is gone"
        );
        c.view(ViewSnapshotRequest {
            snapshotter: sn.clone(),
            key: "v".into(),
            parent: "A".into(),
            labels: Default::default(),
        })
        .await
        .expect("view");
        assert_eq!(
            code(c.commit(commit("V", "v")).await),
            Code::FailedPrecondition,
            "a view does not commit"
        );
        let mounts = |key: &str| MountsRequest {
            snapshotter: sn.clone(),
            key: key.into(),
        };
        assert_eq!(code(c.mounts(mounts("A")).await), Code::FailedPrecondition);
        assert_eq!(code(c.mounts(mounts("nope")).await), Code::NotFound);
        let remove = |key: &str| RemoveSnapshotRequest {
            snapshotter: sn.clone(),
            key: key.into(),
        };
        assert_eq!(
            code(c.remove(remove("A")).await),
            Code::FailedPrecondition,
            "A has a child"
        );
        assert_eq!(code(c.remove(remove("nope")).await), Code::NotFound);
        let update = UpdateSnapshotRequest {
            snapshotter: sn.clone(),
            info: Some(Info {
                name: "A".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types_011::FieldMask {
                paths: vec!["parent".into()],
            }),
        };
        assert_eq!(code(c.update(update).await), Code::InvalidArgument);
        // Nothing the refusals touched changed: A is still there, with its child.
        let st = c
            .stat(StatSnapshotRequest {
                snapshotter: sn.clone(),
                key: "A".into(),
            })
            .await
            .expect("stat")
            .into_inner();
        assert_eq!(st.info.expect("info").name, "A");
        c.remove(remove("v")).await.expect("remove v");
        c.remove(remove("A")).await.expect("remove A");
        assert_eq!(
            code(
                c.stat(StatSnapshotRequest {
                    snapshotter: sn.clone(),
                    key: "A".into()
                })
                .await
            ),
            Code::NotFound
        );
    });
    let left = d.json(&["ls"]);
    assert_eq!(left.as_array().map(Vec::len), Some(0), "{left}");

    // What a crash between a Prepare's mount and its record leaves: a workspace in the
    // snapshotter's directory that no record names. A Prepare of that key replaces it
    // (instead of failing on a busy mountpoint forever), and a restart removes any other.
    let dir = sockets.path().join("snapshotter");
    let orphan = |name: &str| {
        let mp = dir.join(name);
        std::fs::create_dir_all(&mp).expect("mkdir");
        d.json(&["mount", mp.to_str().expect("utf-8"), "--engine", "fuse"]);
    };
    orphan(&helios_snapshot::Hash::of(b"again").to_string());
    orphan("stray");
    rt.block_on(async {
        client(ss.clone())
            .await
            .prepare(PrepareSnapshotRequest {
                snapshotter: "helios".into(),
                key: "again".into(),
                parent: String::new(),
                labels: Default::default(),
            })
            .await
            .expect("a Prepare over a crashed one's leftovers");
    });
    let ws = d.json(&["ls"]);
    assert_eq!(
        ws.as_array().map(Vec::len),
        Some(1),
        "only the new one: {ws}"
    );
    orphan("stray");
    assert!(d.stop().success(), "{}", d.log());
    d.spawn();
    eventually("the orphan removed at start", || {
        d.json(&["ls"]).as_array().map(Vec::len) == Some(1)
    });
    assert!(!dir.join("stray").exists(), "its mountpoint goes too");
}

/// A gRPC client of the snapshotter at `socket`.
async fn client(
    socket: std::path::PathBuf,
) -> containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient<
    containerd_snapshots::tonic::transport::Channel,
> {
    let channel = containerd_snapshots::tonic::transport::Endpoint::try_from("http://[::]:0")
        .expect("endpoint")
        .connect_with_connector(tower_04::service_fn(move |_| {
            tokio::net::UnixStream::connect(socket.clone())
        }))
        .await
        .expect("connect");
    containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient::new(channel)
}
