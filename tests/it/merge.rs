//! Merge through the daemon, as a controller uses it: two branches of a search tree
//! made in one mounted workspace, merged with `helios merge --into`, a conflict and the
//! bad inputs refused with typed errors and nothing written; both engines.

use std::fs;

use super::Daemon;

const NOTES: &str = "one\ntwo\nthree\nfour\nfive\n";

fn count(d: &Daemon) -> usize {
    d.json(&["log"]).as_array().expect("list").len()
}

#[test]
fn merge_of_two_branches_into_a_mounted_workspace() {
    for engine in ["fuse", "overlay"] {
        let mut d = Daemon::start();
        let mp = d.path("ws");
        let mps = mp.to_str().expect("utf8");
        let w = d.json(&["mount", mps, "--engine", engine]);
        let wid = w["id"].as_str().expect("id").to_string();
        fs::write(mp.join("notes.txt"), NOTES).expect("write");
        fs::write(mp.join("gone"), "g").expect("write");
        let s0 = d.json(&["snapshot", mps]);
        let s0 = s0["id"].as_str().expect("id");

        // Branch 1: the first line, a new file.
        fs::write(mp.join("notes.txt"), NOTES.replace("one", "ONE")).expect("write");
        fs::write(mp.join("a_only"), "a").expect("write");
        let s1 = d.json(&["snapshot", mps]);
        let s1 = s1["id"].as_str().expect("id");
        // Branch 2, from the same node: the last line, a deletion.
        d.ok(&["checkout", mps, s0, "--discard"]);
        fs::write(mp.join("notes.txt"), NOTES.replace("five", "FIVE")).expect("write");
        fs::remove_file(mp.join("gone")).expect("rm");
        let s2 = d.json(&["snapshot", mps]);
        let s2 = s2["id"].as_str().expect("id");

        // Into a workspace with uncommitted changes: 409 dirty, nothing written.
        fs::write(mp.join("pending"), "p").expect("write");
        let before = count(&d);
        let out = d.cli(&["merge", s1, s2, "--into", mps]);
        assert!(
            !out.status.success(),
            "{engine}: a dirty workspace is refused"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("dirty"), "{engine}: {err}");
        assert_eq!(count(&d), before, "{engine}: nothing written");
        assert_eq!(fs::read_to_string(mp.join("pending")).expect("read"), "p");
        fs::remove_file(mp.join("pending")).expect("rm");
        d.ok(&["checkout", mps, s2, "--discard"]);

        let m = d.json(&["merge", s1, s2, "--into", mps, "--label", "merged"]);
        assert_eq!(m["parent"], s1, "{engine}");
        assert_eq!(m["merged"], s2, "{engine}");
        assert_eq!(m["label"], "merged");
        assert_eq!(
            fs::read_to_string(mp.join("notes.txt")).expect("read"),
            "ONE\ntwo\nthree\nfour\nFIVE\n",
            "{engine}: the mount shows the merge"
        );
        assert_eq!(fs::read_to_string(mp.join("a_only")).expect("read"), "a");
        assert!(!mp.join("gone").exists(), "{engine}: deleted on one side");
        let ws = d.json(&["ls"]);
        assert_eq!(
            ws[0]["base"], m["id"],
            "{engine}: the workspace is on the merge"
        );
        assert_eq!(ws[0]["dirty"], false);
        let (status, diff) = d.http(
            "GET",
            &format!("/v1/snapshots/{s1}/diff/{}", m["id"].as_str().expect("id")),
            None,
        );
        assert_eq!(status, 200);
        assert_eq!(
            diff["changes"].as_array().expect("changes").len() as u64,
            m["metrics"]["changed_paths"].as_u64().expect("metric"),
            "{engine}: changed_paths counts the difference from the parent"
        );

        // A third branch edits the first line differently: a conflict naming it.
        d.ok(&["checkout", mps, s0, "--discard"]);
        fs::write(mp.join("notes.txt"), NOTES.replace("one", "uno")).expect("write");
        let s3 = d.json(&["snapshot", mps]);
        let s3 = s3["id"].as_str().expect("id");
        let before = count(&d);
        let (status, body) = d.http("POST", &format!("/v1/snapshots/{s1}/merge/{s3}"), None);
        assert_eq!(status, 409, "{engine}: {body}");
        assert_eq!(body["error"]["code"], "conflict");
        assert_eq!(body["error"]["paths"], serde_json::json!(["notes.txt"]));
        let out = d.cli(&["merge", s1, s3]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("notes.txt"),
            "{engine}: the CLI names the path: {err}"
        );
        assert_eq!(count(&d), before, "{engine}: a conflict writes nothing");

        // Bad input.
        let imported = d.path("plain");
        fs::create_dir(&imported).expect("mkdir");
        let other = d.json(&["import", imported.to_str().expect("utf8")]);
        let other = other["id"].as_str().expect("id");
        for (path, body, want, code) in [
            (
                format!("/v1/snapshots/{s1}/merge/{other}"),
                None,
                409,
                "no_common_ancestor",
            ),
            (
                format!("/v1/snapshots/{s1}/merge/s999"),
                None,
                404,
                "not_found",
            ),
            (
                format!("/v1/snapshots/{s1}/merge/nope"),
                None,
                400,
                "bad_request",
            ),
            (
                format!("/v1/snapshots/{s1}/merge/{s2}"),
                Some(r#"{"into": "w999"}"#),
                404,
                "not_found",
            ),
            (
                format!("/v1/snapshots/{s1}/merge/{s2}"),
                Some(r#"{"bogus": 1}"#),
                400,
                "bad_request",
            ),
        ] {
            let before = count(&d);
            let (status, got) = d.http("POST", &path, body);
            assert_eq!(
                (status, got["error"]["code"].as_str()),
                (want, Some(code)),
                "{path}"
            );
            assert_eq!(count(&d), before, "{path}: nothing written");
        }

        // The merge link survives a restart.
        let mid = m["id"].as_str().expect("id").to_string();
        d.stop();
        d.spawn();
        let (status, got) = d.http("GET", &format!("/v1/snapshots/{mid}"), None);
        assert_eq!((status, &got["merged"]), (200, &serde_json::json!(s2)));
        assert!(d.ok(&["fsck"]).starts_with("ok"), "{engine}");
        d.ok(&["unmount", &wid]);
    }
}
