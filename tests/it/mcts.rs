//! The whole MCTS cycle through the CLI: import, mount, write, snapshot, fork N times,
//! write in each, snapshot each, diff siblings, annotate, check out the best in place,
//! prune the losers, gc, and see the space come back.

use std::fs;

use super::Daemon;

#[test]
fn mcts_cycle_through_the_cli() {
    let d = Daemon::start();
    let src = d.path("project");
    fs::create_dir_all(src.join("src")).expect("mkdir");
    fs::write(src.join("src/main.py"), "def score():\n    return 0\n").expect("write");
    fs::write(src.join("README"), "a project\n").expect("write");
    let base = d.json(&["import", src.to_str().expect("utf8"), "--label", "base"]);
    let base_id = base["id"].as_str().expect("id").to_string();
    assert!(base["parent"].is_null());
    assert_eq!(base["root"].as_str().expect("root").len(), 64);

    let main = d.path("main");
    let ws = d.json(&["mount", main.to_str().expect("utf8"), "--from", &base_id]);
    // `auto`: overlay where the host allows it (CI does), fuse otherwise.
    assert_eq!(ws["engine"], "overlay", "{ws}");
    assert!(
        ws["engine_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("auto")),
        "{ws}"
    );
    assert_eq!(ws["base"], base_id.as_str());
    assert_eq!(
        fs::read_to_string(main.join("README")).expect("read"),
        "a project\n"
    );
    fs::write(main.join("notes.txt"), "thinking\n").expect("write");
    let root_snap = d.json(&["snapshot", main.to_str().expect("utf8"), "--label", "root"]);
    let root_id = root_snap["id"].as_str().expect("id").to_string();
    assert_eq!(root_snap["parent"], base_id.as_str());
    assert_eq!(root_snap["metrics"]["changed_paths"], 1);

    // Expand: fork 3 children, act in each, snapshot each.
    let mut children = Vec::new();
    for i in 0..3 {
        let mp = d.path(&format!("child{i}"));
        let w = d.json(&["mount", mp.to_str().expect("utf8"), "--from", &root_id]);
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sed -i 's/return 0/return {i}/' src/main.py && echo branch{i} > branch.txt"
            ))
            .current_dir(&mp)
            .status()
            .expect("sh");
        assert!(status.success());
        let s = d.json(&[
            "snapshot",
            w["id"].as_str().expect("id"),
            "--label",
            &format!("child{i}"),
        ]);
        assert_eq!(s["parent"], root_id.as_str());
        d.json(&[
            "annotate",
            s["id"].as_str().expect("id"),
            &format!("value={i}"),
            "visits=1",
        ]);
        children.push((
            w["id"].as_str().expect("id").to_string(),
            s["id"].as_str().expect("id").to_string(),
        ));
    }
    // Siblings differ in two paths.
    let diff = d.json(&["diff", &children[0].1, &children[1].1]);
    let paths: Vec<&str> = diff["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths, vec!["branch.txt", "src/main.py"]);
    // Transpositions: another path to child 2's state has its root, and a root query
    // finds both.
    let best = &children[2];
    let again = d.path("again");
    let w = d.json(&["mount", again.to_str().expect("utf8"), "--from", &root_id]);
    fs::write(again.join("branch.txt"), "branch2\n").expect("write");
    let main_py = fs::read_to_string(again.join("src/main.py")).expect("read");
    fs::write(
        again.join("src/main.py"),
        main_py.replace("return 0", "return 2"),
    )
    .expect("write");
    let t = d.json(&["snapshot", w["id"].as_str().expect("id")]);
    let best_snap = d.http("GET", &format!("/v1/snapshots/{}", best.1), None).1;
    assert_eq!(t["root"], best_snap["root"], "same files, same root");
    let root = t["root"].as_str().expect("root");
    let (st, same) = d.http("GET", &format!("/v1/snapshots?root={root}"), None);
    assert_eq!(st, 200);
    let ids: Vec<&str> = same
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, vec![best.1.as_str(), t["id"].as_str().expect("id")]);
    let (_, kids) = d.http("GET", &format!("/v1/snapshots?parent={root_id}"), None);
    assert_eq!(kids.as_array().expect("list").len(), 4);
    d.ok(&["unmount", w["id"].as_str().expect("id")]);
    d.json(&["rm", t["id"].as_str().expect("id")]);
    let s = d.json(&["log"]);
    assert_eq!(s.as_array().expect("list").len(), 5);
    // Backtrack: check out the best child in the main workspace, in place.
    d.json(&["checkout", main.to_str().expect("utf8"), &best.1]);
    assert_eq!(
        fs::read_to_string(main.join("branch.txt")).expect("read"),
        "branch2\n"
    );
    assert!(
        fs::read_to_string(main.join("src/main.py"))
            .expect("read")
            .contains("return 2")
    );
    let log = d.ok(&["log", &root_id]);
    assert!(
        log.contains("child2") && log.contains("\"value\":2"),
        "{log}"
    );
    // Pack the history (as the daemon does in the background), then read it back.
    let pack = d.json(&["pack"]);
    assert!(pack["snapshots"].as_u64().expect("n") >= 5, "{pack}");
    assert!(
        pack["bytes_after"].as_u64() <= pack["bytes_before"].as_u64(),
        "{pack}"
    );
    assert_eq!(d.json(&["pack"])["rewritten"], 0, "nothing new to pack");
    // Drop the losers' workspaces and snapshots, then gc.
    let before = d.json(&["stats"]);
    for (w, _) in &children {
        d.ok(&["unmount", w]);
    }
    for (_, s) in &children[..2] {
        let out = d.json(&["rm", s, "--recursive"]);
        assert_eq!(out["removed"].as_array().expect("removed").len(), 1);
    }
    let gc = d.json(&["gc"]);
    assert!(gc["freed_objects"].as_u64().expect("n") >= 2, "{gc}");
    let after = d.json(&["stats"]);
    assert!(
        after["stored_bytes"].as_u64() < before["stored_bytes"].as_u64(),
        "{before} -> {after}"
    );
    assert_eq!(after["snapshots"], 3);
    let fsck = d.ok(&["fsck"]);
    assert!(fsck.starts_with("ok"), "{fsck}");
    let ls = d.json(&["ls"]);
    assert_eq!(ls.as_array().expect("list").len(), 1);
    assert_eq!(ls[0]["base"], best.1.as_str());
    // Packed and collected, every kept snapshot reads back: the root, then the best.
    d.json(&["checkout", main.to_str().expect("utf8"), &root_id]);
    assert!(!main.join("branch.txt").exists());
    d.json(&["checkout", main.to_str().expect("utf8"), &best.1]);
    assert_eq!(
        fs::read_to_string(main.join("branch.txt")).expect("read"),
        "branch2\n"
    );
}
