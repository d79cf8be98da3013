//! Crash consistency: the backend "loses power" after N writes, for every N of a
//! workload. Every snapshot acknowledged before the crash must survive with its
//! content, the store must reopen, and fsck must pass.

use std::sync::Arc;

use helios_snapshot::store::{Backend, Fault, FaultyBackend, MemBackend};
use helios_snapshot::{Repo, SnapshotId};

use super::contents;

type Acked = Vec<(SnapshotId, Vec<(String, Option<Vec<u8>>)>)>;

/// Runs a workload until the first error; returns the acknowledged snapshots.
fn workload(repo: &Repo) -> Acked {
    let mut acked = Vec::new();
    let _ = (|| -> helios_snapshot::Result<()> {
        let ws = repo.create_workspace(None, false, Default::default())?;
        for round in 0..6 {
            ws.mkdir_path(&format!("d{round}"))?;
            ws.write_file(&format!("d{round}/f"), format!("round {round}").as_bytes())?;
            ws.write_file("shared", &vec![round as u8; 200_000])?;
            let s = ws.snapshot(Some(format!("r{round}")), Default::default())?;
            acked.push((s.id, contents(&ws)));
            if round % 2 == 1 {
                let fork = repo.create_workspace(Some(s.id), false, Default::default())?;
                fork.write_file("fork-only", b"x")?;
                let s2 = fork.snapshot(None, Default::default())?;
                acked.push((s2.id, contents(&fork)));
                repo.delete_workspace(fork.id())?;
                repo.prune(s2.id, false)?;
                acked.pop();
                repo.gc()?;
            }
        }
        Ok(())
    })();
    acked
}

#[test]
fn acknowledged_snapshots_survive_a_crash_at_every_write() {
    // Count the writes of a full run first.
    let probe = Arc::new(FaultyBackend::new(
        MemBackend::new(),
        u64::MAX,
        Fault::Crash,
    ));
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo =
            Repo::open_with(dir.path(), probe.clone() as Arc<dyn Backend>, 1 << 20).expect("open");
        assert_eq!(workload(&repo).len(), 6);
    }
    let total = probe.writes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(total > 10);
    for budget in 1..total {
        let inner = MemBackend::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let faulty = Arc::new(FaultyBackend::new(inner.clone(), budget, Fault::Crash));
        let acked = match Repo::open_with(dir.path(), faulty as Arc<dyn Backend>, 1 << 20) {
            Ok(repo) => workload(&repo),
            Err(_) => Vec::new(),
        };
        // "Reboot": a new repo over what reached the backend, with a cold cache.
        let dir2 = tempfile::tempdir().expect("tempdir");
        let repo = Repo::open_with(dir2.path(), Arc::new(inner) as Arc<dyn Backend>, 1 << 20)
            .unwrap_or_else(|e| panic!("crash after {budget} writes: reopen failed: {e}"));
        for (id, want) in &acked {
            let ws = repo
                .create_workspace(Some(*id), true, Default::default())
                .unwrap_or_else(|e| panic!("crash after {budget} writes: snapshot {id} lost: {e}"));
            assert_eq!(
                &contents(&ws),
                want,
                "crash after {budget} writes: snapshot {id} content"
            );
        }
        let fsck = repo.fsck().expect("fsck");
        assert!(fsck.ok(), "crash after {budget} writes: {:?}", fsck.errors);
        // Ids are never reused after a crash.
        let ws = repo
            .create_workspace(None, false, Default::default())
            .expect("create");
        let s = ws
            .snapshot(None, Default::default())
            .expect("snapshot after reboot");
        assert!(acked.iter().all(|(id, _)| *id < s.id));
    }
}
