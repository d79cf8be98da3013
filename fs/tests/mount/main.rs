//! Tests that mount workspaces for real with the FUSE engine (CI runs as root with
//! /dev/fuse; these tests fail, never skip, when mounting is impossible).

#![allow(clippy::new_without_default)]

/// Runs each test of a module once per engine: `MODULE::fuse::NAME` and
/// `MODULE::overlay::NAME`, each calling `MODULE::NAME(engine)`.
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod fuse {
            $(#[test] fn $name() { super::$name(helios_fs::Engine::Fuse) })*
        }
        mod overlay {
            $(#[test] fn $name() { super::$name(helios_fs::Engine::Overlay) })*
        }
    };
}

mod checkout;
mod differential;
mod overlay;
mod posix;
mod tools;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use helios_fs::{Engine, Engines, Mount, MountOptions, MountedWorkspace};
use helios_snapshot::{Repo, SnapshotId, Workspace};

/// A repo and a mounted workspace; dropping it unmounts (even when a test panics).
pub struct Fixture {
    pub mnt: Option<Mount>,
    pub repo: Arc<Repo>,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A new empty workspace, mounted.
    pub fn new() -> Fixture {
        Fixture::with(None, false, MountOptions::default())
    }

    /// A workspace over `from`, mounted with `opts`.
    pub fn with(from: Option<SnapshotId>, read_only: bool, opts: MountOptions) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Arc::new(Repo::open(&dir.path().join("state")).expect("open repo"));
        Fixture::in_repo(dir, repo, from, read_only, opts)
    }

    fn in_repo(
        dir: tempfile::TempDir,
        repo: Arc<Repo>,
        from: Option<SnapshotId>,
        read_only: bool,
        opts: MountOptions,
    ) -> Fixture {
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mkdir mountpoint");
        let ws = repo
            .create_workspace(from, read_only, Default::default())
            .expect("workspace");
        let mnt = Mount::fuse(ws, &path, &opts).expect("mount (needs root and /dev/fuse)");
        Fixture {
            mnt: Some(mnt),
            repo,
            path,
            _dir: dir,
        }
    }

    pub fn mount(&self) -> &Mount {
        self.mnt.as_ref().expect("mounted")
    }

    pub fn ws(&self) -> &Arc<Workspace> {
        self.mount().workspace()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(m) = self.mnt.take() {
            let _ = m.unmount();
        }
    }
}

/// A repo and one workspace mounted with a chosen engine; dropping it unmounts.
pub struct EngineFixture {
    pub mnt: Option<Box<dyn MountedWorkspace>>,
    pub repo: Arc<Repo>,
    pub path: PathBuf,
    _engines: Engines,
    _dir: tempfile::TempDir,
}

impl EngineFixture {
    /// A new empty workspace served by `engine`, mounted.
    pub fn new(engine: Engine) -> EngineFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Arc::new(Repo::open(&dir.path().join("state")).expect("open repo"));
        let engines = Engines::new(repo.clone(), MountOptions::default());
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mkdir mountpoint");
        let ws = repo
            .create_workspace(None, false, Default::default())
            .expect("workspace");
        let mnt = engines
            .mount(engine, ws.id(), &path)
            .expect("mount (needs root, /dev/fuse, overlayfs)");
        EngineFixture {
            mnt: Some(mnt),
            repo,
            path,
            _engines: engines,
            _dir: dir,
        }
    }

    pub fn mount(&self) -> &dyn MountedWorkspace {
        self.mnt.as_deref().expect("mounted")
    }

    pub fn snapshot(&self) -> helios_snapshot::Snapshot {
        self.mnt
            .as_ref()
            .expect("mounted")
            .snapshot(None, Default::default())
            .expect("snapshot")
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for EngineFixture {
    fn drop(&mut self) {
        if let Some(m) = self.mnt.take() {
            let _ = m.unmount();
        }
    }
}

/// Every path below `root` with a content summary, for comparing trees.
pub fn tree(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&p).expect("lstat");
            let what = if meta.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).expect("readlink").display())
            } else {
                let data = std::fs::read(&p).expect("read");
                format!(
                    "{} bytes {:x}",
                    data.len(),
                    data.iter()
                        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(*b as u64))
                )
            };
            out.push((rel, what));
        }
    }
    out.sort();
    out
}
