//! The containerd snapshotter (issue 11 item 3): containerd's snapshots API over gRPC on
//! a Unix socket (a containerd proxy plugin), served by the `containerd-snapshots` crate
//! on the daemon's runtime. An active snapshot (Prepare) is a helios workspace mounted
//! under the snapshotter's directory, a view (View) a read-only one, a committed
//! snapshot (Commit) a helios snapshot; containerd's keys, names, parents and labels are
//! records in the store (`Repo::ext_*`, namespace `containerd`). Mounts are bind mounts
//! of the workspace's mountpoint, which containerd performs itself.
//!
//! ```toml
//! # /etc/containerd/config.toml
//! [proxy_plugins.helios]
//!   type = "snapshot"
//!   address = "/run/helios/snapshotter.sock"
//! ```

// tonic's `Status` is the error type of containerd-snapshots' trait, and it is large.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_snapshots::{Info, Kind, Snapshotter, Usage, api, tonic};
use helios_fs::EngineChoice;
use helios_snapshot::{SnapshotId, SnapshotRequest, WorkspaceId};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::error::ApiError;
use crate::state::{Create, Daemon};

/// The store namespace of the records.
const NS: &str = "containerd";

/// One containerd snapshot, by key (active, view) or name (committed).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    kind: RecordKind,
    #[serde(default)]
    parent: String,
    #[serde(default)]
    labels: HashMap<String, String>,
    /// Nanoseconds since the epoch.
    created: u64,
    updated: u64,
    /// Active and view: the workspace behind it, and where it is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workspace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mountpoint: Option<String>,
    /// Committed: the helios snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RecordKind {
    Active,
    View,
    Committed,
}

/// The snapshotter over one daemon.
pub struct HeliosSnapshotter {
    daemon: Arc<Daemon>,
    /// Where active snapshots and views are mounted.
    dir: PathBuf,
    /// One change at a time (a prepare's check and create, a commit's snapshot and
    /// records): containerd calls concurrently.
    changing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for HeliosSnapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeliosSnapshotter")
            .field("dir", &self.dir)
            .finish()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn api_status(e: ApiError) -> Status {
    let msg = e.message;
    match e.status.as_u16() {
        400 => Status::invalid_argument(msg),
        404 => Status::not_found(msg),
        409 => Status::failed_precondition(msg),
        507 => Status::resource_exhausted(msg),
        _ => Status::internal(msg),
    }
}

fn core_status(e: helios_snapshot::Error) -> Status {
    api_status(ApiError::from(e))
}

/// Where the mounts of the snapshotter at `socket` live: the socket's path without its
/// extension (`/run/helios/snapshotter.sock` -> `/run/helios/snapshotter/`), or with
/// `.d` appended when it has none.
pub fn mounts_dir(socket: &Path) -> PathBuf {
    if socket.extension().is_some() {
        socket.with_extension("")
    } else {
        let mut p = socket.as_os_str().to_owned();
        p.push(".d");
        PathBuf::from(p)
    }
}

/// Deletes the workspaces mounted in the snapshotter's directory that no record names:
/// what a crash between a Prepare's mount and its record left. Returns how many.
fn remove_orphans(d: &Daemon, dir: &Path) -> Result<usize, Status> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Ok(0);
    };
    let named: std::collections::HashSet<String> = d
        .repo
        .ext_list(NS)
        .map_err(core_status)?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<Record>(&v).ok()?.mountpoint)
        // Workspaces' mountpoints are canonical paths; compare like with like.
        .map(|m| std::fs::canonicalize(&m).map_or(m, |p| p.display().to_string()))
        .collect();
    let mut n = 0;
    for w in d.list().map_err(api_status)? {
        if Path::new(&w.mountpoint).starts_with(&dir) && !named.contains(&w.mountpoint) {
            tracing::info!(workspace = %w.id, mountpoint = %w.mountpoint, "snapshotter: removing a workspace no record names");
            d.delete(parse_workspace(&w.id)?).map_err(api_status)?;
            let _ = std::fs::remove_dir(&w.mountpoint);
            n += 1;
        }
    }
    Ok(n)
}

/// Creates the mountpoints of every active snapshot and view before the daemon mounts
/// its workspaces again (the directory may be on a tmpfs a reboot emptied).
pub fn prepare_dirs(repo: &helios_snapshot::Repo, dir: &Path) {
    let _ = std::fs::create_dir_all(dir);
    for (_, v) in repo.ext_list(NS).unwrap_or_default() {
        if let Ok(r) = serde_json::from_slice::<Record>(&v)
            && let Some(m) = r.mountpoint
        {
            let _ = std::fs::create_dir_all(m);
        }
    }
}

impl HeliosSnapshotter {
    pub fn new(daemon: Arc<Daemon>, dir: PathBuf) -> HeliosSnapshotter {
        HeliosSnapshotter {
            daemon,
            dir,
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs blocking store and mount work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Daemon) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let d = self.daemon.clone();
        tokio::task::spawn_blocking(move || f(&d))
            .await
            .map_err(|e| Status::internal(format!("snapshotter task: {e}")))?
    }

    async fn get(&self, key: String) -> Result<Option<Record>, Status> {
        self.blocking(move |d| read(d, &key)).await
    }

    async fn create(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
        kind: RecordKind,
    ) -> Result<Vec<api::types::Mount>, Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("a snapshot key may not be empty"));
        }
        let _one = self.changing.lock().await;
        let dir = self.dir.clone();
        self.blocking(move |d| {
            if read(d, &key)?.is_some() {
                return Err(Status::already_exists(format!("snapshot {key:?} exists")));
            }
            let from = if parent.is_empty() {
                None
            } else {
                match read(d, &parent)? {
                    Some(Record {
                        kind: RecordKind::Committed,
                        snapshot: Some(s),
                        ..
                    }) => Some(parse_snapshot(&s)?),
                    Some(_) => {
                        return Err(Status::failed_precondition(format!(
                            "parent {parent:?} is not a committed snapshot"
                        )));
                    }
                    None => {
                        return Err(Status::not_found(format!("parent {parent:?} not found")));
                    }
                }
            };
            // One directory per key, named so any key fits. A workspace already there is
            // an earlier Prepare of this key that crashed before its record.
            let mp = dir.join(helios_snapshot::Hash::of(key.as_bytes()).to_string());
            remove_orphans(d, &dir)?;
            std::fs::create_dir_all(&mp)
                .map_err(|e| Status::internal(format!("create {}: {e}", mp.display())))?;
            let mp_str = mp.display().to_string();
            let created = d
                .create(
                    &mp_str,
                    from,
                    EngineChoice::Auto,
                    Create {
                        drop_on_unmount: false,
                        read_only: kind == RecordKind::View,
                        quota: None,
                    },
                )
                .map_err(api_status);
            let ws = match created {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = std::fs::remove_dir(&mp);
                    return Err(e);
                }
            };
            let t = now();
            let rec = Record {
                kind,
                parent,
                labels,
                created: t,
                updated: t,
                workspace: Some(ws.id.clone()),
                mountpoint: Some(mp_str),
                snapshot: None,
            };
            if let Err(e) = write(d, &[(&key, Some(&rec))]) {
                let _ = parse_workspace(&ws.id).map(|id| d.delete(id));
                let _ = std::fs::remove_dir(&mp);
                return Err(e);
            }
            Ok(mounts_of(&rec))
        })
        .await
    }
}

fn read(d: &Daemon, key: &str) -> Result<Option<Record>, Status> {
    match d.repo.ext_get(NS, key).map_err(core_status)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| Status::data_loss(format!("snapshot record {key:?}: {e}"))),
    }
}

fn write(d: &Daemon, records: &[(&str, Option<&Record>)]) -> Result<(), Status> {
    let encoded: Vec<(&str, Option<Vec<u8>>)> = records
        .iter()
        .map(|(k, r)| (*k, r.map(|r| serde_json::to_vec(r).unwrap_or_default())))
        .collect();
    let refs: Vec<(&str, Option<&[u8]>)> =
        encoded.iter().map(|(k, v)| (*k, v.as_deref())).collect();
    d.repo.ext_write(NS, &refs).map_err(core_status)
}

fn parse_snapshot(s: &str) -> Result<SnapshotId, Status> {
    s.parse()
        .map_err(|_| Status::data_loss(format!("bad snapshot id {s:?} in a record")))
}

fn parse_workspace(s: &str) -> Result<WorkspaceId, Status> {
    s.parse()
        .map_err(|_| Status::data_loss(format!("bad workspace id {s:?} in a record")))
}

fn mounts_of(r: &Record) -> Vec<api::types::Mount> {
    let Some(mp) = &r.mountpoint else {
        return Vec::new();
    };
    let mut options = vec!["rbind".to_string()];
    options.push(
        if r.kind == RecordKind::View {
            "ro"
        } else {
            "rw"
        }
        .into(),
    );
    vec![api::types::Mount {
        r#type: "bind".into(),
        source: mp.clone(),
        target: String::new(),
        options,
    }]
}

fn info(name: String, r: &Record) -> Info {
    Info {
        kind: match r.kind {
            RecordKind::Active => Kind::Active,
            RecordKind::View => Kind::View,
            RecordKind::Committed => Kind::Committed,
        },
        name,
        parent: r.parent.clone(),
        labels: r.labels.clone(),
        created_at: time(r.created),
        updated_at: time(r.updated),
    }
}

/// Files and bytes under `dir` (not following symlinks; hard links counted once).
fn walk_usage(dir: &Path) -> Usage {
    let mut u = Usage::default();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            use std::os::unix::fs::MetadataExt;
            if !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            u.inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                u.size += m.len() as i64;
            }
        }
    }
    u
}

#[tonic::async_trait]
impl Snapshotter for HeliosSnapshotter {
    type Error = Status;

    async fn stat(&self, key: String) -> Result<Info, Status> {
        match self.get(key.clone()).await? {
            Some(r) => Ok(info(key, &r)),
            None => Err(Status::not_found(format!("snapshot {key:?} not found"))),
        }
    }

    async fn update(&self, i: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Status> {
        let _one = self.changing.lock().await;
        self.blocking(move |d| {
            let key = i.name.clone();
            let Some(mut r) = read(d, &key)? else {
                return Err(Status::not_found(format!("snapshot {key:?} not found")));
            };
            let paths = fieldpaths.unwrap_or_default();
            if paths.is_empty() {
                r.labels = i.labels.clone();
            }
            for p in &paths {
                if p == "labels" {
                    r.labels = i.labels.clone();
                } else if let Some(l) = p.strip_prefix("labels.") {
                    match i.labels.get(l) {
                        Some(v) => r.labels.insert(l.to_string(), v.clone()),
                        None => r.labels.remove(l),
                    };
                } else {
                    return Err(Status::invalid_argument(format!(
                        "cannot update {p:?}: only labels change"
                    )));
                }
            }
            r.updated = now();
            write(d, &[(&key, Some(&r))])?;
            Ok(info(key, &r))
        })
        .await
    }

    async fn usage(&self, key: String) -> Result<Usage, Status> {
        let Some(r) = self.get(key.clone()).await? else {
            return Err(Status::not_found(format!("snapshot {key:?} not found")));
        };
        self.blocking(move |d| match (&r.mountpoint, &r.snapshot) {
            (Some(mp), _) => Ok(walk_usage(Path::new(mp))),
            (None, Some(s)) => {
                let s = d.repo.snapshot(parse_snapshot(s)?).map_err(core_status)?;
                Ok(Usage {
                    inodes: 0,
                    size: s.bytes as i64,
                })
            }
            _ => Ok(Usage::default()),
        })
        .await
    }

    async fn mounts(&self, key: String) -> Result<Vec<api::types::Mount>, Status> {
        match self.get(key.clone()).await? {
            Some(r) if r.kind != RecordKind::Committed => Ok(mounts_of(&r)),
            Some(_) => Err(Status::failed_precondition(format!(
                "snapshot {key:?} is committed: it has no mounts (prepare one over it)"
            ))),
            None => Err(Status::not_found(format!("snapshot {key:?} not found"))),
        }
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<api::types::Mount>, Status> {
        self.create(key, parent, labels, RecordKind::Active).await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<api::types::Mount>, Status> {
        self.create(key, parent, labels, RecordKind::View).await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument("a snapshot name may not be empty"));
        }
        let _one = self.changing.lock().await;
        self.blocking(move |d| {
            if read(d, &name)?.is_some() {
                return Err(Status::already_exists(format!("snapshot {name:?} exists")));
            }
            let r = match read(d, &key)? {
                Some(r) if r.kind == RecordKind::Active => r,
                Some(_) => {
                    return Err(Status::failed_precondition(format!(
                        "snapshot {key:?} is not active: only an active snapshot commits"
                    )));
                }
                None => return Err(Status::not_found(format!("snapshot {key:?} not found"))),
            };
            let ws = parse_workspace(r.workspace.as_deref().unwrap_or_default())?;
            let mut annotations = serde_json::Map::new();
            annotations.insert("containerd.name".into(), name.clone().into());
            let s = d
                .snapshot(
                    ws,
                    SnapshotRequest {
                        label: Some(name.clone()),
                        annotations,
                        ..Default::default()
                    },
                )
                .map_err(api_status)?;
            let t = now();
            let committed = Record {
                kind: RecordKind::Committed,
                parent: r.parent.clone(),
                labels,
                created: t,
                updated: t,
                workspace: None,
                mountpoint: None,
                snapshot: Some(s.id.to_string()),
            };
            // The name and the key's end in one write; then the workspace goes.
            write(d, &[(&name, Some(&committed)), (&key, None)])?;
            remove_workspace(d, &r);
            Ok(())
        })
        .await
    }

    async fn remove(&self, key: String) -> Result<(), Status> {
        let _one = self.changing.lock().await;
        self.blocking(move |d| {
            let Some(r) = read(d, &key)? else {
                return Err(Status::not_found(format!("snapshot {key:?} not found")));
            };
            if r.kind == RecordKind::Committed {
                let children: Vec<String> = d
                    .repo
                    .ext_list(NS)
                    .map_err(core_status)?
                    .into_iter()
                    .filter_map(|(k, v)| {
                        let c: Record = serde_json::from_slice(&v).ok()?;
                        (c.parent == key).then_some(k)
                    })
                    .collect();
                if !children.is_empty() {
                    return Err(Status::failed_precondition(format!(
                        "snapshot {key:?} has children ({}): remove them first",
                        children.join(", ")
                    )));
                }
            }
            write(d, &[(&key, None)])?;
            remove_workspace(d, &r);
            Ok(())
        })
        .await
    }

    /// containerd's Cleanup: removes the workspaces no record names (also run at start).
    async fn clear(&self) -> Result<(), Status> {
        let _one = self.changing.lock().await;
        let dir = self.dir.clone();
        self.blocking(move |d| remove_orphans(d, &dir).map(|_| ()))
            .await
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info, Status>>>;

    async fn list(
        &self,
        _snapshotter: String,
        _filters: Vec<String>,
    ) -> Result<Self::InfoStream, Status> {
        let all = self
            .blocking(|d| d.repo.ext_list(NS).map_err(core_status))
            .await?;
        let infos: Vec<Result<Info, Status>> = all
            .into_iter()
            .filter_map(|(k, v)| {
                let r: Record = serde_json::from_slice(&v).ok()?;
                Some(Ok(info(k, &r)))
            })
            .collect();
        Ok(tokio_stream::iter(infos))
    }
}

/// Unmounts and deletes the workspace of an active snapshot or view, and its mountpoint.
fn remove_workspace(d: &Daemon, r: &Record) {
    if let Some(ws) = r.workspace.as_deref().and_then(|w| w.parse().ok())
        && let Err(e) = d.delete(ws)
    {
        tracing::warn!(workspace = %ws, error = %e.message, "snapshotter: workspace not deleted");
    }
    if let Some(mp) = &r.mountpoint {
        let _ = std::fs::remove_dir(mp);
    }
}

/// Serves the snapshotter on `socket` until the runtime stops.
pub async fn serve(daemon: Arc<Daemon>, socket: PathBuf) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&socket);
    if let Some(p) = socket.parent() {
        std::fs::create_dir_all(p)?;
    }
    let listener = tokio::net::UnixListener::bind(&socket)?;
    tracing::info!(socket = %socket.display(), "containerd snapshotter listening");
    let dir = mounts_dir(&socket);
    std::fs::create_dir_all(&dir)?;
    // Canonical, as the workspaces' mountpoints are (a record names its mountpoint).
    let dir = std::fs::canonicalize(&dir)?;
    let sn = Arc::new(HeliosSnapshotter::new(daemon, dir));
    if let Err(e) = sn.clear().await {
        tracing::warn!(error = %e.message(), "snapshotter: orphaned workspaces not removed");
    }
    let service = containerd_snapshots::server(sn);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
        .await
        .map_err(std::io::Error::other)
}
