//! Tests of the snapshot core through its public API: workspace semantics, a proptest
//! model, crash consistency, import/export, gc and fsck.

mod crash;
mod durability;
mod edits;
mod merge;
mod model;
mod pack;
mod quota;
mod repo;
mod workspace;

use std::sync::Arc;

use helios_snapshot::store::{Backend, MemBackend};
use helios_snapshot::{Repo, Workspace};

/// A repo over RocksDB in a fresh temporary directory.
pub fn rocks_repo() -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repo::open(dir.path()).expect("open repo");
    (dir, repo)
}

/// A repo over an in-memory backend (returned too, to reopen it).
pub fn mem_repo() -> (tempfile::TempDir, MemBackend, Repo) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = MemBackend::new();
    let repo = Repo::open_with(
        dir.path(),
        Arc::new(backend.clone()) as Arc<dyn Backend>,
        64 << 20,
    )
    .expect("open repo");
    (dir, backend, repo)
}

/// Every path with its content (`None` for directories, `Some("-> target")` for links).
pub fn contents(ws: &Workspace) -> Vec<(String, Option<Vec<u8>>)> {
    use helios_snapshot::Kind;
    ws.walk()
        .expect("walk")
        .into_iter()
        .map(|(path, kind)| {
            let data = match kind {
                Kind::File => Some(ws.read_file(&path).expect("read")),
                Kind::Symlink => {
                    let mut t = b"-> ".to_vec();
                    t.extend(
                        ws.readlink(ws.resolve(&path).expect("resolve"))
                            .expect("readlink"),
                    );
                    Some(t)
                }
                Kind::Fifo => Some(b"|fifo".to_vec()),
                Kind::CharDev | Kind::BlockDev | Kind::Socket => Some(b"|special".to_vec()),
                Kind::Dir => None,
            };
            (path, data)
        })
        .collect()
}

/// What a walk of the workspace finds: every name, and the sizes of its files.
pub fn walked(ws: &Workspace) -> helios_snapshot::Usage {
    let mut u = helios_snapshot::Usage::default();
    for (path, kind) in ws.walk().expect("walk") {
        u.inodes += 1;
        if kind == helios_snapshot::Kind::File {
            u.bytes += ws
                .getattr(ws.resolve(&path).expect("resolve"))
                .expect("stat")
                .size;
        }
    }
    u
}
