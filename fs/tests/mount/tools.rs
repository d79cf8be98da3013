//! Real tools inside a mount of each engine: git, tar, sqlite3, python.

use std::path::Path;
use std::process::Command;

use helios_fs::Engine;

use super::{EngineFixture, tree};

both_engines!(
    git_init_add_commit_status_checkout,
    tar_extract_thousands_of_files,
    sqlite_journal_and_wal,
    python_venv_and_compileall,
    sed_in_place_and_cp_p_keep_the_mode,
    cp_a_keeps_attributes_through_a_snapshot,
);

fn run(dir: &Path, cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn git_init_add_commit_status_checkout(engine: Engine) {
    let fx = EngineFixture::new(engine);
    let d = &fx.path;
    run(
        d,
        "git init -q -b main . && git config user.email t@t && git config user.name t",
    );
    run(
        d,
        "mkdir -p src && for i in $(seq 1 50); do echo \"line $i\" > src/f$i.txt; done",
    );
    run(d, "git add -A && git commit -qm first");
    assert_eq!(run(d, "git status --porcelain"), "");
    run(
        d,
        "echo changed >> src/f1.txt && git checkout -q -b topic && git commit -qam second",
    );
    run(d, "git checkout -q main");
    assert_eq!(run(d, "cat src/f1.txt"), "line 1\n");
    assert_eq!(run(d, "git log --oneline | wc -l").trim(), "1");
    run(d, "git fsck --no-progress");
    // A snapshot of the repository is a repository.
    let s = fx.snapshot();
    let out = tempfile::tempdir().expect("tempdir");
    fx.repo.export(s.id, &out.path().join("e")).expect("export");
    run(
        &out.path().join("e"),
        "git fsck --no-progress && git status --porcelain | wc -l",
    );
}

fn tar_extract_thousands_of_files(engine: Engine) {
    let src = tempfile::tempdir().expect("tempdir");
    run(
        src.path(),
        "mkdir -p t && for d in $(seq 1 30); do mkdir t/d$d; for f in $(seq 1 100); do echo \"$d/$f\" > t/d$d/f$f; done; done; ln -s d1/f1 t/link; tar -cf t.tar t",
    );
    let fx = EngineFixture::new(engine);
    run(
        &fx.path,
        &format!("tar -xf {}", src.path().join("t.tar").display()),
    );
    assert_eq!(tree(&fx.p("t")), tree(&src.path().join("t")));
    assert_eq!(run(&fx.path, "find t -type f | wc -l").trim(), "3000");
    run(&fx.path, "rm -rf t");
    assert_eq!(run(&fx.path, "ls -A | wc -l").trim(), "0");
}

fn sqlite_journal_and_wal(engine: Engine) {
    let fx = EngineFixture::new(engine);
    for (db, mode) in [("j.db", "DELETE"), ("w.db", "WAL")] {
        let sql = format!(
            "PRAGMA journal_mode={mode}; CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<2000) \
             INSERT INTO t(v) SELECT printf('row %d', i) FROM n; \
             UPDATE t SET v='x' WHERE k % 7 = 0; DELETE FROM t WHERE k % 11 = 0;"
        );
        run(&fx.path, &format!("sqlite3 {db} \"{sql}\""));
        let count = run(
            &fx.path,
            &format!(
                "sqlite3 {db} 'SELECT count(*), sum(v = \"x\") FROM t; PRAGMA integrity_check;'"
            ),
        );
        assert_eq!(count, "1819|260\nok\n", "{mode}");
    }
    let s = fx.snapshot();
    let out = tempfile::tempdir().expect("tempdir");
    fx.repo.export(s.id, &out.path().join("e")).expect("export");
    assert_eq!(
        run(
            &out.path().join("e"),
            "sqlite3 j.db 'SELECT count(*) FROM t'"
        ),
        "1819\n"
    );
}

fn python_venv_and_compileall(engine: Engine) {
    let fx = EngineFixture::new(engine);
    run(&fx.path, "python3 -m venv --without-pip venv");
    run(
        &fx.path,
        "mkdir pkg && for i in $(seq 1 40); do echo \"def f$i(): return $i\" > pkg/m$i.py; done && touch pkg/__init__.py",
    );
    run(&fx.path, "./venv/bin/python -m compileall -q pkg");
    assert_eq!(
        run(
            &fx.path,
            "./venv/bin/python -c 'import pkg.m7; print(pkg.m7.f7())'"
        ),
        "7\n"
    );
    assert!(fx.p("pkg/__pycache__").is_dir());
}

/// Regression: `sed -i` and `cp -p` copy a file's mode by setting a POSIX access ACL on
/// the new file; the mode must follow (it stayed 0600, mkstemp's mode, before).
fn sed_in_place_and_cp_p_keep_the_mode(engine: Engine) {
    let fx = EngineFixture::new(engine);
    run(
        &fx.path,
        "printf 'x\\n' > f && chmod 640 f && sed -i s/x/y/ f && cp -p f g && chmod 751 g && cp -p g h",
    );
    assert_eq!(
        run(&fx.path, "stat -c '%a %n' f g h"),
        "640 f\n751 g\n751 h\n"
    );
    assert_eq!(run(&fx.path, "cat f"), "y\n");
    // A minimal ACL is a mode, not an xattr kept beside it.
    assert_eq!(
        xattr::get(fx.p("f"), "system.posix_acl_access")
            .ok()
            .flatten(),
        None
    );
}

/// `cp -a` keeps names, modes, mtimes, sizes and symlinks, in the mount and through a
/// snapshot and its export.
fn cp_a_keeps_attributes_through_a_snapshot(engine: Engine) {
    let src = tempfile::tempdir().expect("tempdir");
    run(
        src.path(),
        "mkdir -p t/a/b && for i in $(seq 1 30); do echo $i > t/a/f$i; done && chmod 600 t/a/f1 && chmod 755 t/a/f2 && ln -s f1 t/a/l && touch -d '2001-02-03 04:05:06.789' t/a/f3 t/a/b",
    );
    let listing = "find . -printf '%p %M %TY-%Tm-%Td %TT %s %l\\n' | sort";
    let want = run(&src.path().join("t"), listing);
    let fx = EngineFixture::new(engine);
    run(
        &fx.path,
        &format!("cp -a {} .", src.path().join("t").display()),
    );
    assert_eq!(run(&fx.p("t"), listing), want);
    let s = fx.snapshot();
    let out = tempfile::tempdir().expect("tempdir");
    fx.repo.export(s.id, &out.path().join("e")).expect("export");
    assert_eq!(run(&out.path().join("e/t"), listing), want);
}
