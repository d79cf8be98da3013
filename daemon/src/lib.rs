//! helios-daemon: the control plane. A tokio server speaking HTTP/1.1 + JSON on a Unix
//! socket, the registry of mounted workspaces, graceful shutdown and metrics.

pub mod api;
pub mod error;
pub mod metrics;
pub mod snapshotter;
pub mod state;
pub mod wire;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use helios_fs::MountOptions;
use helios_snapshot::Repo;
use tokio::net::UnixListener;

use crate::api::{Access, AppState, Peer};
use crate::state::Daemon;

/// How to run the daemon.
#[derive(Clone, Debug)]
pub struct Config {
    /// The state directory (store, workspaces, caches).
    pub state_dir: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// A group allowed to use the socket (mode 0660), besides the owner and root.
    pub group: Option<u32>,
    /// FUSE options of every mount.
    pub mount: MountOptions,
    /// Also serve `GET /metrics` (and nothing else) on this TCP address, for Prometheus.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Also serve containerd's snapshots API (gRPC, a containerd proxy plugin) on this
    /// socket; its active snapshots are mounted under the socket's path without its
    /// extension (see `snapshotter`).
    pub snapshotter_socket: Option<PathBuf>,
}

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another daemon holds the state directory.
    #[error("another helios daemon is using {0}")]
    Locked(PathBuf),
    /// The socket path is served by a live daemon.
    #[error("a daemon is already listening on {0}")]
    SocketInUse(PathBuf),
    /// I/O while preparing.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] helios_snapshot::Error),
}

/// How long a client may take to send a request's headers: a connection that trickles
/// them (slowloris) is closed, so idle sockets cannot pile up.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a request body may go without sending anything: a body trickled slower than
/// this ends the request with an error, so it cannot hold its connection for ever.
const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A request body that fails when no frame arrives for `idle`.
struct IdleTimeoutBody {
    inner: hyper::body::Incoming,
    idle: std::time::Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for IdleTimeoutBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                        "no request body data for {} s",
                        idle.as_secs()
                    )
                    .into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves the API on `listener` until `shutdown` completes, then lets requests in flight
/// finish. Mounts stay up: the caller decides what shutdown means for them. Each
/// connection is its own task, with a deadline for its headers; a malformed request
/// costs its own connection only.
pub async fn run(
    listener: UnixListener,
    app: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    use tower_service::Service;
    let router = api::router(app);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connections as we go.
        while conns.try_join_next().is_some() {}
        let peer = Peer::of(&stream);
        let router = router.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut req = req.map(|inner| {
                        axum::body::Body::new(IdleTimeoutBody {
                            inner,
                            idle: BODY_IDLE_TIMEOUT,
                            timer: None,
                        })
                    });
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let mut router = router.clone();
                    async move { router.call(req).await }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.changed() => conn.as_mut().graceful_shutdown(),
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Takes an exclusive lock on the state directory for the life of the returned file.
fn lock_state_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, StartError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StartError::Io(format!("create {}", dir.display()), e))?;
    let path = dir.join("daemon.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StartError::Io(format!("open {}", path.display()), e))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| StartError::Locked(dir.to_path_buf()))
}

/// Binds the control socket: a stale socket file is replaced, a live one is refused.
fn bind_socket(path: &Path, group: Option<u32>) -> Result<UnixListener, StartError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| StartError::Io(format!("create {}", parent.display()), e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError::SocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path)
            .map_err(|e| StartError::Io(format!("remove stale {}", path.display()), e))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| StartError::Io(format!("bind {}", path.display()), e))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| StartError::Io(format!("chmod {}", path.display()), e))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| StartError::Io(format!("chgrp {}", path.display()), e.into()))?;
    }
    Ok(listener)
}

/// The listening socket systemd passed (socket activation: `LISTEN_PID` is this
/// process and `LISTEN_FDS` names one descriptor, 3), if it passed one; it then owns the
/// socket's path and mode.
fn activated_listener() -> Result<Option<std::os::unix::net::UnixListener>, StartError> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let fds = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok());
    if !ours || fds.is_none_or(|n| n == 0) {
        return Ok(None);
    }
    const SD_LISTEN_FDS_START: i32 = 3;
    // SAFETY: by the socket-activation protocol descriptor 3 is a socket systemd opened
    // for this process (LISTEN_PID checked above) and nothing else in it owns it.
    #[allow(unsafe_code)]
    let fd = unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(SD_LISTEN_FDS_START)
    };
    let listener = std::os::unix::net::UnixListener::from(fd);
    listener
        .set_nonblocking(true)
        .map_err(|e| StartError::Io("the activated socket".into(), e))?;
    // Not for the children (mount helpers, fusermount3).
    // SAFETY: called first in `serve`, before this process starts any other thread.
    #[allow(unsafe_code)]
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    Ok(Some(listener))
}

/// Pins glibc's mmap threshold. Every FUSE session thread allocates a 16 MiB zeroed
/// request buffer; with glibc's default dynamic threshold, once one such buffer is freed
/// later ones come from the heap and calloc touches every page (measured: 5.7 GB RSS with
/// 289 mounts). Served by mmap, the untouched pages cost nothing.
#[allow(unsafe_code)]
fn pin_mmap_threshold() {
    // SAFETY: mallopt only changes allocator tuning; called once at start-up, before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Raises the open-file limit to its hard maximum: every mount and open file costs fds.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT: opens the store, mounts
/// the persisted workspaces again, serves the socket; at the signal, stops accepting,
/// finishes requests in flight, saves and unmounts every workspace, flushes the store.
pub fn serve(config: Config) -> Result<(), StartError> {
    // First, while this is the only thread (it edits the environment).
    let activated = activated_listener()?;
    let bound_here = activated.is_none();
    pin_mmap_threshold();
    raise_fd_limit();
    let _lock = lock_state_dir(&config.state_dir)?;
    let repo = Arc::new(Repo::open(&config.state_dir)?);
    if let Some(s) = &config.snapshotter_socket {
        snapshotter::prepare_dirs(&repo, &snapshotter::mounts_dir(s));
    }
    let daemon = Arc::new(Daemon::new(repo, config.mount.clone()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("helios-api")
        .build()
        .map_err(|e| StartError::Io("start runtime".into(), e))?;
    let restored = daemon.restore().map_err(|e| {
        StartError::Io(
            "restore workspaces".into(),
            std::io::Error::other(e.message),
        )
    })?;
    tracing::info!(restored, "workspaces mounted again");
    watch_unmounts(Arc::downgrade(&daemon));
    pack_in_background(Arc::downgrade(&daemon));
    let result = rt.block_on(async {
        let listener = match activated {
            Some(l) => {
                tracing::info!("serving the socket systemd passed (socket activation)");
                UnixListener::from_std(l)
                    .map_err(|e| StartError::Io("use the activated socket".into(), e))?
            }
            None => bind_socket(&config.socket, config.group)?,
        };
        tracing::info!(socket = %config.socket.display(), state = %config.state_dir.display(), "helios daemon listening");
        let app = AppState {
            daemon: daemon.clone(),
            access: Access {
                uid: nix::unistd::geteuid().as_raw(),
                group: config.group,
            },
        };
        if let Some(addr) = config.metrics_listen {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Io(format!("listen on {addr} for metrics"), e))?;
            tracing::info!(address = %addr, "serving GET /metrics over TCP");
            let router = api::metrics_router(app.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(tcp, router).await {
                    tracing::warn!(error = %e, "the metrics listener stopped");
                }
            });
        }
        if let Some(socket) = config.snapshotter_socket.clone() {
            let d = daemon.clone();
            tokio::spawn(async move {
                if let Err(e) = snapshotter::serve(d, socket).await {
                    tracing::warn!(error = %e, "the containerd snapshotter stopped");
                }
            });
        }
        run(listener, app, shutdown_signal())
            .await
            .map_err(|e| StartError::Io("serve".into(), e))
    });
    tracing::info!("shutting down: saving and unmounting workspaces");
    let d = daemon.clone();
    // Unmounting waits for FUSE sessions; do it outside the runtime's async threads.
    std::thread::spawn(move || d.shutdown()).join().ok();
    if bound_here {
        let _ = std::fs::remove_file(&config.socket);
    }
    drop(rt);
    result
}

/// How often the background packer looks for new snapshots.
const PACK_POLL: std::time::Duration = std::time::Duration::from_secs(30);
/// It packs once this many snapshots are new...
const PACK_AFTER_SNAPSHOTS: u64 = 256;
/// ...or when any are and this long has passed since the last pack.
const PACK_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Packs new snapshots in the background (`Repo::pack`), on a thread at the lowest
/// priority, so that history costs about what it changed without a commit paying for
/// compression.
fn pack_in_background(daemon: std::sync::Weak<Daemon>) {
    let spawned = std::thread::Builder::new()
        .name("helios-pack".into())
        .spawn(move || {
            lowest_priority();
            let mut last = std::time::Instant::now();
            loop {
                std::thread::sleep(PACK_POLL);
                let Some(d) = daemon.upgrade() else { return };
                let Ok(new) = d.repo.unpacked() else { continue };
                if new == 0 || (new < PACK_AFTER_SNAPSHOTS && last.elapsed() < PACK_AFTER) {
                    continue;
                }
                match d.repo.pack() {
                    Ok(r) => tracing::info!(
                        snapshots = r.snapshots,
                        rewritten = r.rewritten,
                        deltas = r.deltas,
                        bytes_before = r.bytes_before,
                        bytes_after = r.bytes_after,
                        "packed"
                    ),
                    Err(e) => tracing::warn!(error = %e, "background pack failed; retried later"),
                }
                last = std::time::Instant::now();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the background packer");
    }
}

/// Lowers the calling thread to nice 19 (Linux keeps a nice value per thread).
#[allow(unsafe_code)]
fn lowest_priority() {
    // SAFETY: setpriority only changes this thread's scheduling priority.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// Watches the mount table (poll(2) on /proc/self/mountinfo wakes up at every change,
/// and once a second regardless) for workspaces unmounted from outside that live as
/// long as their mount, and drops them.
fn watch_unmounts(daemon: std::sync::Weak<Daemon>) {
    let spawned = std::thread::Builder::new()
        .name("helios-unmounts".into())
        .spawn(move || {
            let table = match std::fs::File::open("/proc/self/mountinfo") {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the mount table: `umount` of a mount.helios workspace will not drop it");
                    return;
                }
            };
            loop {
                use std::os::fd::AsFd;
                let mut fds = [nix::poll::PollFd::new(
                    table.as_fd(),
                    nix::poll::PollFlags::POLLPRI,
                )];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16));
                let Some(d) = daemon.upgrade() else { return };
                d.drop_unmounted();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch the mount table");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
