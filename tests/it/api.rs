//! The API through raw HTTP: bad input gets a 4xx with `{"error": {"code", "message"}}`
//! and changes nothing; the socket is private; /metrics speaks Prometheus.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::Daemon;

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let d = Daemon::start();
    let src = d.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    fs::write(src.join("f"), "x").expect("write");
    let (st, snap) = d.http(
        "POST",
        "/v1/snapshots/import",
        Some(&format!("{{\"path\": {:?}}}", src)),
    );
    assert_eq!(st, 201, "{snap}");
    let sid = snap["id"].as_str().expect("id").to_string();
    let mp = d.path("mp");
    fs::create_dir(&mp).expect("mkdir");
    let (st, ws) = d.http(
        "POST",
        "/v1/workspaces",
        Some(&format!("{{\"mountpoint\": {mp:?}, \"from\": \"{sid}\"}}")),
    );
    assert_eq!(st, 201, "{ws}");
    let wid = ws["id"].as_str().expect("id").to_string();
    fs::write(mp.join("dirty"), "uncommitted").expect("write");

    let file = d.path("a-file");
    fs::write(&file, "").expect("write");
    let full = d.path("full");
    fs::create_dir(&full).expect("mkdir");
    fs::create_dir(d.path("mp2")).expect("mkdir");
    fs::write(full.join("x"), "").expect("write");
    let big = format!("{{\"path\": \"{}\"}}", "a".repeat(2 << 20));
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        (
            "POST",
            "/v1/workspaces".into(),
            Some("{not json".into()),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/workspaces".into(),
            Some(format!("{{\"mountpoint\": {mp:?}, \"bogus\": 1}}")),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/workspaces".into(),
            Some("{\"mountpoint\": \"relative/path\"}".into()),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/workspaces".into(),
            Some(format!("{{\"mountpoint\": {:?}}}", d.path("missing"))),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/workspaces".into(),
            Some(format!("{{\"mountpoint\": {file:?}}}")),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/workspaces".into(),
            Some(format!("{{\"mountpoint\": {full:?}}}")),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/workspaces".into(),
            Some(format!("{{\"mountpoint\": {mp:?}}}")),
            409,
            "conflict",
        ),
        (
            "POST",
            "/v1/workspaces".into(),
            Some(format!(
                "{{\"mountpoint\": {:?}, \"from\": \"s999\"}}",
                d.path("mp2")
            )),
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/snapshots/import".into(),
            Some(format!("{{\"path\": {:?}}}", d.path("nope"))),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/snapshots/import".into(),
            Some("{\"path\": \"rel\"}".into()),
            400,
            "bad_request",
        ),
        (
            "POST",
            format!("/v1/snapshots/{sid}/export"),
            Some(format!("{{\"path\": {full:?}}}")),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/snapshots/import".into(),
            Some(big),
            413,
            "too_large",
        ),
        ("GET", "/v1/snapshots/s999".into(), None, 404, "not_found"),
        (
            "GET",
            "/v1/snapshots/banana".into(),
            None,
            400,
            "bad_request",
        ),
        ("GET", "/v1/workspaces/w999".into(), None, 404, "not_found"),
        (
            "DELETE",
            "/v1/workspaces/w999".into(),
            None,
            404,
            "not_found",
        ),
        (
            "GET",
            format!("/v1/snapshots/{sid}/diff/s999"),
            None,
            404,
            "not_found",
        ),
        (
            "POST",
            format!("/v1/workspaces/{wid}/checkout"),
            Some(format!("{{\"snapshot\": \"{sid}\"}}")),
            409,
            "dirty",
        ),
        (
            "POST",
            format!("/v1/workspaces/{wid}/checkout"),
            Some("{\"snapshot\": \"s999\", \"discard\": true}".into()),
            404,
            "not_found",
        ),
        (
            "DELETE",
            format!("/v1/snapshots/{sid}"),
            None,
            409,
            "in_use",
        ),
        ("GET", "/v1/nothing-here".into(), None, 404, "not_found"),
    ];
    let before = d.http("GET", "/v1/stats", None).1;
    for (method, path, body, status, code) in &cases {
        let (st, v) = d.http(method, path, body.as_deref());
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (*status, Some(*code)),
            "{method} {path}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    let after = d.http("GET", "/v1/stats", None).1;
    assert_eq!(before["snapshots"], after["snapshots"]);
    assert_eq!(before["workspaces"], after["workspaces"]);
    assert_eq!(
        fs::read_to_string(mp.join("dirty")).expect("read"),
        "uncommitted",
        "a refused checkout changes nothing"
    );
    assert!(
        fs::read_dir(&full).expect("read").count() == 1,
        "export left the target alone"
    );
    // The daemon is still healthy after all that.
    assert_eq!(d.http("GET", "/v1/health", None).0, 200);
}

#[test]
fn socket_is_private_and_peers_are_checked() {
    let d = Daemon::start();
    let mode = fs::metadata(&d.socket).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                super::BIN,
                "--socket",
            ])
            .arg(&d.socket)
            .args(args)
            .output()
            .expect("setpriv")
    };
    // The directory must be traversable for the test; the socket mode still refuses.
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = as_nobody(&["stats"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Even with a world-writable socket, the peer-credential check refuses other users.
    fs::set_permissions(&d.socket, fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = as_nobody(&["stats"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_are_prometheus_text() {
    let d = Daemon::start();
    let mp = d.path("m");
    d.json(&["mount", mp.to_str().expect("utf8")]);
    fs::write(mp.join("f"), "x").expect("write");
    d.json(&["snapshot", mp.to_str().expect("utf8")]);
    let (st, text) = d.http("GET", "/metrics", None);
    assert_eq!(st, 200);
    let text = text.as_str().expect("text").to_string();
    assert!(
        text.contains("helios_operation_duration_seconds_count{op=\"snapshot\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("helios_operation_duration_seconds_count{op=\"fork\"} 1"),
        "{text}"
    );
    assert!(text.contains("helios_workspaces_mounted 1"), "{text}");
    // Memory by part, so an operator can tell what a growing daemon holds.
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert!(gauge("helios_process_resident_bytes") > 1e6, "{text}");
    assert!(gauge("helios_rocksdb_memtable_bytes") > 0.0, "{text}");
    assert!(gauge("helios_object_cache_bytes") > 0.0, "{text}");
    for name in [
        "helios_rocksdb_table_readers_bytes",
        "helios_rocksdb_block_cache_bytes",
        "helios_rocksdb_block_cache_pinned_bytes",
    ] {
        gauge(name);
    }
    assert!(text.contains("helios_http_requests_total{method=\"POST\",route=\"/v1/workspaces/{id}/snapshot\",status=\"201\"} 1"), "{text}");
}

/// Issue 10, item 1: a fuse workspace counts the requests its mount serves, by opcode;
/// an overlay workspace serves none.
#[test]
fn fuse_requests_are_counted_by_opcode() {
    let d = Daemon::start();
    let fuse = d.path("fuse");
    fs::create_dir(&fuse).expect("mkdir");
    let fp = fuse.to_str().expect("utf8");
    d.ok(&["mount", fp, "--engine", "fuse"]);
    let before = d.json(&["requests", fp]);
    assert_eq!(before["engine"], "fuse", "{before}");
    for i in 0..20 {
        fs::write(fuse.join(format!("f{i}")), "x").expect("write");
    }
    let after = d.json(&["requests", fp]);
    let n = |v: &serde_json::Value, op: &str| v["by_op"][op].as_u64().unwrap_or(0);
    assert_eq!(n(&after, "create") - n(&before, "create"), 20, "{after}");
    let total = |v: &serde_json::Value| v["total"].as_u64().expect("total");
    assert!(total(&after) >= total(&before) + 40, "{before} {after}");
    let human = d.ok(&["requests", fp]);
    assert!(human.contains("create"), "{human}");

    let ov = d.path("ov");
    fs::create_dir(&ov).expect("mkdir");
    let op = ov.to_str().expect("utf8");
    d.ok(&["mount", op, "--engine", "overlay"]);
    fs::write(ov.join("f"), "x").expect("write");
    let v = d.json(&["requests", op]);
    assert_eq!(v["engine"], "overlay", "{v}");
    assert_eq!(v["total"], 0, "{v}");
    let (code, body) = d.http("GET", "/v1/workspaces/w99/requests", None);
    assert_eq!(code, 404, "{body}");
}
