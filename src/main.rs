//! The `helios` command: `helios serve` runs the daemon; every other subcommand is a
//! client of its API, printing a short human line or, with `--json`, the API's JSON.

mod client;
mod mount_helper;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::client::Client;

#[derive(Parser)]
#[command(
    name = "helios",
    version,
    about = "Copy-on-write snapshot filesystem for AI agent workspaces"
)]
#[command(arg_required_else_help = true)]
struct Cli {
    /// The daemon's control socket [default: $HELIOS_SOCKET, /run/helios/helios.sock for
    /// root, $XDG_RUNTIME_DIR/helios.sock otherwise]
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print the API's JSON instead of a human line.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground.
    Serve {
        /// State directory [default: $HELIOS_STATE_DIR, /var/lib/helios for root,
        /// $XDG_DATA_HOME/helios otherwise]
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Also allow this group id on the socket (mode 0660).
        #[arg(long)]
        group: Option<u32>,
        /// FUSE threads per mounted workspace [default: one per core, 2 to 4].
        #[arg(long)]
        threads: Option<usize>,
        /// Serve file data in userspace even where FUSE passthrough is available.
        #[arg(long)]
        no_passthrough: bool,
        /// Serve FUSE requests through the device even where the kernel offers
        /// FUSE-over-io_uring (enabled by root with `echo Y >
        /// /sys/module/fuse/parameters/enable_uring`).
        #[arg(long)]
        no_io_uring: bool,
        /// Seconds between background syncs of each workspace's journal, which bound
        /// what a crash loses of changes nobody fsynced; 0: sync only on fsync
        /// [default: 5].
        #[arg(long)]
        journal_interval: Option<f64>,
        /// Also serve GET /metrics (Prometheus text) on this TCP address, e.g.
        /// 127.0.0.1:9464.
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Also serve containerd's snapshots API on this socket (a containerd proxy
        /// plugin: `[proxy_plugins.helios] type = "snapshot" address = PATH`); its
        /// active snapshots are mounted under PATH without its extension.
        #[arg(long)]
        snapshotter_socket: Option<PathBuf>,
        /// A TOML file with any of: state_dir, socket, group, threads, passthrough,
        /// io_uring, journal_interval, metrics_listen, snapshotter_socket. Flags given on the command line win.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Import a directory as a new root snapshot.
    Import {
        dir: PathBuf,
        #[arg(long)]
        label: Option<String>,
    },
    /// Create a workspace (empty or from a snapshot) and mount it.
    Mount {
        mountpoint: PathBuf,
        #[arg(long)]
        from: Option<String>,
        /// fuse, overlay or auto.
        #[arg(long)]
        engine: Option<String>,
        /// Mount the snapshot read-only (fuse engine): writes get EROFS, snapshots are
        /// refused, checkouts switch it to another snapshot.
        #[arg(long)]
        read_only: bool,
        /// Limit on the bytes of its files (e.g. 512M, 4G; fuse engine): past it, writes
        /// get EDQUOT ("Disk quota exceeded").
        #[arg(long, value_parser = parse_size)]
        quota_bytes: Option<u64>,
        /// Limit on its names (files, directories, symlinks; fuse engine).
        #[arg(long)]
        quota_inodes: Option<u64>,
    },
    /// Set a workspace's quota (both limits omitted: remove it).
    Quota {
        workspace: String,
        /// Limit on the bytes of its files (e.g. 512M, 4G).
        #[arg(long, value_parser = parse_size)]
        bytes: Option<u64>,
        /// Limit on its names.
        #[arg(long)]
        inodes: Option<u64>,
    },
    /// Snapshot a workspace (named by id or mountpoint).
    Snapshot {
        workspace: String,
        #[arg(long)]
        label: Option<String>,
        /// Acknowledge once written to the store's log, before it is synced: survives a
        /// crash of the daemon, not a power cut (the next synced write makes it durable).
        #[arg(long)]
        buffered: bool,
    },
    /// Switch a workspace to another snapshot in place.
    Checkout {
        workspace: String,
        snapshot: String,
        /// Throw away uncommitted changes.
        #[arg(long)]
        discard: bool,
    },
    /// Merge snapshot B into snapshot A (three-way, against their common ancestor): a
    /// new snapshot, child of A; a conflict lists the paths that do not merge.
    Merge {
        a: String,
        b: String,
        /// Check this workspace (id or mountpoint; no uncommitted changes) out to the
        /// merge.
        #[arg(long)]
        into: Option<String>,
        #[arg(long)]
        label: Option<String>,
    },
    /// Paths that differ between two snapshots.
    Diff { a: String, b: String },
    /// The snapshot tree (below SNAPSHOT, or all of it).
    Log { snapshot: Option<String> },
    /// List workspaces.
    Ls,
    /// Attach KEY=VALUE annotations (VALUE parsed as JSON when it is JSON).
    Annotate {
        snapshot: String,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Delete a snapshot (or its subtree).
    Rm {
        snapshot: String,
        #[arg(long)]
        recursive: bool,
    },
    /// Unmount and delete a workspace.
    Unmount { workspace: String },
    /// Write a snapshot into a directory (missing or empty).
    Export { snapshot: String, dir: PathBuf },
    /// The FUSE requests a mounted workspace served, by opcode (since it was mounted).
    Requests { workspace: String },
    /// Make forks of a snapshot fast: its files in the file cache and, for the overlay
    /// engine, a native lower layer the kernel reads alone (the root of a search tree).
    Warm { snapshot: String },
    /// Reclaim space no snapshot or workspace uses.
    Gc,
    /// Pack the snapshots taken since the last pack now: objects rewritten as zstd, or
    /// as deltas against their predecessors (the daemon does it in the background).
    Pack,
    /// Store and graph counters.
    Stats,
    /// Verify every object and reference.
    Fsck,
}

/// `helios serve --config FILE`: the daemon's settings as TOML; unknown keys are an
/// error, so a typo never silently falls back to a default.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    group: Option<u32>,
    threads: Option<usize>,
    passthrough: Option<bool>,
    io_uring: Option<bool>,
    journal_interval: Option<f64>,
    metrics_listen: Option<String>,
    snapshotter_socket: Option<PathBuf>,
}

impl ServeFile {
    fn read(path: &Path) -> Result<ServeFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid helios config", path.display()))
    }
}

fn default_socket() -> PathBuf {
    if let Some(s) = std::env::var_os("HELIOS_SOCKET") {
        return PathBuf::from(s);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/helios/helios.sock");
    }
    let runtime =
        std::env::var_os("XDG_RUNTIME_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    runtime.join("helios.sock")
}

fn default_state_dir() -> PathBuf {
    if let Some(s) = std::env::var_os("HELIOS_STATE_DIR") {
        return PathBuf::from(s);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/helios");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".local/share")
        });
    data.join("helios")
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()?.join(p))
}

/// A workspace id, from an id (`w3`) or a mountpoint path.
fn workspace_id(c: &Client, arg: &str) -> Result<String> {
    if arg.starts_with('w') && arg[1..].chars().all(|ch| ch.is_ascii_digit()) && arg.len() > 1 {
        return Ok(arg.to_string());
    }
    let path = absolute(Path::new(arg))?;
    let path = path.canonicalize().unwrap_or(path);
    let list = c.call("GET", "/v1/workspaces", None)?;
    for w in list.as_array().into_iter().flatten() {
        if w["mountpoint"].as_str().map(Path::new) == Some(path.as_path()) {
            return Ok(w["id"].as_str().unwrap_or_default().to_string());
        }
    }
    bail!("no workspace is mounted at {}", path.display())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn snapshot_line(s: &Value) -> String {
    let m = &s["metrics"];
    let parent = s["parent"]
        .as_str()
        .map_or_else(|| "root".to_string(), |p| format!("parent {p}"));
    format!(
        "{}  ({parent}, {} paths changed, {} new, {} µs)",
        s["id"].as_str().unwrap_or("?"),
        m["changed_paths"],
        human_bytes(m["new_bytes"].as_u64().unwrap_or(0)),
        m["latency_us"]
    )
}

/// A size in bytes: a number, optionally with a binary suffix (K, M, G, T; `KiB`,
/// `MB` and `k` read the same).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 512M, 4G)"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn quota_part(w: &Value) -> String {
    let q = &w["quota"];
    if q.is_null() {
        return String::new();
    }
    let u = &w["usage"];
    let mut parts = Vec::new();
    if let Some(b) = q["bytes"].as_u64() {
        let used = u["bytes"].as_u64().map_or("?".into(), human_bytes);
        parts.push(format!("{used}/{}", human_bytes(b)));
    }
    if let Some(n) = q["inodes"].as_u64() {
        let used = u["inodes"].as_u64().map_or("?".into(), |v| v.to_string());
        parts.push(format!("{used}/{n} inodes"));
    }
    format!("  quota {}", parts.join(", "))
}

fn workspace_line(w: &Value) -> String {
    format!(
        "{}  {}  {}{}  base={}  {}{}",
        w["id"].as_str().unwrap_or("?"),
        w["mountpoint"].as_str().unwrap_or(""),
        w["engine"].as_str().unwrap_or(""),
        if w["passthrough"].as_bool() == Some(true) {
            "+passthrough"
        } else {
            ""
        },
        w["base"].as_str().unwrap_or("-"),
        if w["dirty"].as_bool() == Some(true) {
            "dirty"
        } else {
            "clean"
        },
        quota_part(w),
    )
}

fn print_log(all: &[Value], from: Option<&str>) -> String {
    let mut out = String::new();
    fn walk(all: &[Value], id: &str, prefix: &str, last: bool, top: bool, out: &mut String) {
        let Some(s) = all.iter().find(|s| s["id"] == id) else {
            return;
        };
        let branch = if top {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let label = s["label"]
            .as_str()
            .map(|l| format!(" {l}"))
            .unwrap_or_default();
        let ann = s["annotations"]
            .as_object()
            .filter(|a| !a.is_empty())
            .map(|a| format!(" {}", Value::Object(a.clone())))
            .unwrap_or_default();
        let root = s["root"]
            .as_str()
            .map(|r| &r[..r.len().min(12)])
            .unwrap_or("");
        let merged = s["merged"]
            .as_str()
            .map(|m| format!(" (merge of {m})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{prefix}{branch}{id}{label}{merged}  [{root}]{ann}\n"
        ));
        let children: Vec<&str> = all
            .iter()
            .filter(|c| c["parent"] == id)
            .filter_map(|c| c["id"].as_str())
            .collect();
        let child_prefix = if top {
            prefix.to_string()
        } else {
            format!("{prefix}{}", if last { "   " } else { "│  " })
        };
        for (i, c) in children.iter().enumerate() {
            walk(all, c, &child_prefix, i + 1 == children.len(), false, out);
        }
    }
    let roots: Vec<&str> = match from {
        Some(id) => vec![id],
        None => all
            .iter()
            .filter(|s| s["parent"].is_null())
            .filter_map(|s| s["id"].as_str())
            .collect(),
    };
    for r in roots {
        walk(all, r, "", true, true, &mut out);
    }
    out
}

fn run(cli: Cli) -> Result<()> {
    if let Cmd::Serve {
        state_dir,
        group,
        threads,
        no_passthrough,
        no_io_uring,
        journal_interval,
        metrics_listen,
        snapshotter_socket,
        config,
    } = cli.cmd
    {
        let file = match &config {
            Some(p) => ServeFile::read(p)?,
            None => ServeFile::default(),
        };
        let journal_interval = match journal_interval.or(file.journal_interval).unwrap_or(5.0) {
            0.0 => None,
            s if s.is_finite() && s > 0.0 => Some(std::time::Duration::from_secs_f64(s)),
            s => {
                anyhow::bail!("journal_interval must be 0 or a positive number of seconds, not {s}")
            }
        };
        let metrics_listen = metrics_listen
            .or(file.metrics_listen)
            .map(|a| {
                a.parse::<std::net::SocketAddr>().with_context(|| {
                    format!("metrics_listen {a:?} is not an address like 127.0.0.1:9464")
                })
            })
            .transpose()?;
        let config = helios_daemon::Config {
            state_dir: state_dir
                .or(file.state_dir)
                .unwrap_or_else(default_state_dir),
            socket: cli.socket.or(file.socket).unwrap_or_else(default_socket),
            group: group.or(file.group),
            mount: helios_fs::MountOptions {
                threads: threads
                    .or(file.threads)
                    .unwrap_or_else(helios_fs::default_threads),
                passthrough: !no_passthrough && file.passthrough.unwrap_or(true),
                // allow_other needs root (or user_allow_other in /etc/fuse.conf).
                allow_other: nix::unistd::geteuid().is_root()
                    || std::fs::read_to_string("/etc/fuse.conf")
                        .is_ok_and(|c| c.lines().any(|l| l.trim() == "user_allow_other")),
                journal_interval,
                io_uring: !no_io_uring && file.io_uring.unwrap_or(true),
            },
            metrics_listen,
            snapshotter_socket: snapshotter_socket.or(file.snapshotter_socket),
        };
        return helios_daemon::serve(config).map_err(Into::into);
    }
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    let c = Client::new(&socket)?;
    let (value, human): (Value, String) = match cli.cmd {
        Cmd::Serve { .. } => unreachable!("handled above"),
        Cmd::Import { dir, label } => {
            let dir = absolute(&dir)?;
            let v = c.call(
                "POST",
                "/v1/snapshots/import",
                Some(json!({"path": dir, "label": label})),
            )?;
            let h = snapshot_line(&v);
            (v, h)
        }
        Cmd::Mount {
            mountpoint,
            from,
            engine,
            read_only,
            quota_bytes,
            quota_inodes,
        } => {
            let mp = absolute(&mountpoint)?;
            if !mp.exists() {
                std::fs::create_dir_all(&mp).with_context(|| format!("create {}", mp.display()))?;
            }
            let mp = mp.canonicalize().unwrap_or(mp);
            let mut body =
                json!({"mountpoint": mp, "from": from, "engine": engine, "read_only": read_only});
            if quota_bytes.is_some() || quota_inodes.is_some() {
                body["quota"] = json!({"bytes": quota_bytes, "inodes": quota_inodes});
            }
            let v = c.call("POST", "/v1/workspaces", Some(body))?;
            let h = workspace_line(&v);
            (v, h)
        }
        Cmd::Quota {
            workspace,
            bytes,
            inodes,
        } => {
            let id = workspace_id(&c, &workspace)?;
            let v = c.call(
                "PUT",
                &format!("/v1/workspaces/{id}/quota"),
                Some(json!({"bytes": bytes, "inodes": inodes})),
            )?;
            let h = workspace_line(&v);
            (v, h)
        }
        Cmd::Snapshot {
            workspace,
            label,
            buffered,
        } => {
            let id = workspace_id(&c, &workspace)?;
            let durability = if buffered { "buffered" } else { "sync" };
            let v = c.call(
                "POST",
                &format!("/v1/workspaces/{id}/snapshot"),
                Some(json!({"label": label, "durability": durability})),
            )?;
            let h = snapshot_line(&v);
            (v, h)
        }
        Cmd::Checkout {
            workspace,
            snapshot,
            discard,
        } => {
            let id = workspace_id(&c, &workspace)?;
            let v = c.call(
                "POST",
                &format!("/v1/workspaces/{id}/checkout"),
                Some(json!({"snapshot": snapshot, "discard": discard})),
            )?;
            let h = format!("{id} now at {}", v["base"].as_str().unwrap_or("?"));
            (v, h)
        }
        Cmd::Merge { a, b, into, label } => {
            let into = into.map(|w| workspace_id(&c, &w)).transpose()?;
            let v = c.call(
                "POST",
                &format!("/v1/snapshots/{a}/merge/{b}"),
                Some(json!({"label": label, "into": into})),
            )?;
            let mut h = format!("{} merged into {a}: {}", b, snapshot_line(&v));
            if let Some(w) = &into {
                h.push_str(&format!("\n{w} now at {}", v["id"].as_str().unwrap_or("?")));
            }
            (v, h)
        }
        Cmd::Diff { a, b } => {
            let v = c.call("GET", &format!("/v1/snapshots/{a}/diff/{b}"), None)?;
            let mut h = String::new();
            for ch in v["changes"].as_array().into_iter().flatten() {
                let k = match ch["kind"].as_str() {
                    Some("added") => "A",
                    Some("deleted") => "D",
                    _ => "M",
                };
                h.push_str(&format!(
                    "{k} {} ({})\n",
                    ch["path"].as_str().unwrap_or(""),
                    human_bytes(ch["size"].as_u64().unwrap_or(0))
                ));
            }
            if h.is_empty() {
                h = "no differences".into();
            }
            (v, h.trim_end().to_string())
        }
        Cmd::Log { snapshot } => {
            let v = c.call("GET", "/v1/snapshots", None)?;
            if let Some(s) = &snapshot {
                c.call("GET", &format!("/v1/snapshots/{s}"), None)?;
            }
            let all = v.as_array().cloned().unwrap_or_default();
            let h = print_log(&all, snapshot.as_deref());
            (v, h.trim_end().to_string())
        }
        Cmd::Ls => {
            let v = c.call("GET", "/v1/workspaces", None)?;
            let h: Vec<String> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(workspace_line)
                .collect();
            (v, h.join("\n"))
        }
        Cmd::Annotate { snapshot, pairs } => {
            let mut ann = serde_json::Map::new();
            for p in pairs {
                let Some((k, val)) = p.split_once('=') else {
                    bail!("annotation {p:?} is not KEY=VALUE");
                };
                let parsed =
                    serde_json::from_str(val).unwrap_or_else(|_| Value::String(val.to_string()));
                ann.insert(k.to_string(), parsed);
            }
            let v = c.call(
                "PATCH",
                &format!("/v1/snapshots/{snapshot}"),
                Some(json!({"annotations": ann})),
            )?;
            let h = format!("{snapshot} annotated: {}", v["annotations"]);
            (v, h)
        }
        Cmd::Rm {
            snapshot,
            recursive,
        } => {
            let v = c.call(
                "DELETE",
                &format!("/v1/snapshots/{snapshot}?recursive={recursive}"),
                None,
            )?;
            let ids: Vec<&str> = v["removed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let h = format!("removed {}", ids.join(" "));
            (v, h)
        }
        Cmd::Unmount { workspace } => {
            let id = workspace_id(&c, &workspace)?;
            c.call("DELETE", &format!("/v1/workspaces/{id}"), None)?;
            (json!({"id": id}), format!("{id} unmounted"))
        }
        Cmd::Export { snapshot, dir } => {
            let dir = absolute(&dir)?;
            let v = c.call(
                "POST",
                &format!("/v1/snapshots/{snapshot}/export"),
                Some(json!({"path": dir})),
            )?;
            (v, format!("exported {snapshot} to {}", dir.display()))
        }
        Cmd::Requests { workspace } => {
            let id = workspace_id(&c, &workspace)?;
            let v = c.call("GET", &format!("/v1/workspaces/{id}/requests"), None)?;
            let mut h = format!(
                "{id} ({}): {} requests",
                v["engine"].as_str().unwrap_or("?"),
                v["total"]
            );
            if let Some(ops) = v["by_op"].as_object() {
                for (op, n) in ops {
                    h.push_str(&format!("\n  {op:<16} {n}"));
                }
            }
            (v, h)
        }
        Cmd::Warm { snapshot } => {
            let v = c.call("POST", &format!("/v1/snapshots/{snapshot}/warm"), None)?;
            let layer = if v["native"].as_bool() == Some(true) {
                "native lower layer ready"
            } else {
                "files cached (no native lower layer here)"
            };
            let h = format!(
                "{snapshot}: {layer}; {} files, {} bytes, {} ms",
                v["files"],
                v["bytes"],
                v["latency_us"].as_u64().unwrap_or(0) / 1000
            );
            (v, h)
        }
        Cmd::Gc => {
            let v = c.call("POST", "/v1/gc", None)?;
            let h = format!(
                "freed {} objects, {}",
                v["freed_objects"],
                human_bytes(v["freed_bytes"].as_u64().unwrap_or(0))
            );
            (v, h)
        }
        Cmd::Pack => {
            let v = c.call("POST", "/v1/pack", None)?;
            let before = v["bytes_before"].as_u64().unwrap_or(0);
            let after = v["bytes_after"].as_u64().unwrap_or(0);
            let h = format!(
                "packed {} snapshots: {} objects rewritten ({} as deltas), {} -> {}",
                v["snapshots"],
                v["rewritten"],
                v["deltas"],
                human_bytes(before),
                human_bytes(after)
            );
            (v, h)
        }
        Cmd::Stats => {
            let v = c.call("GET", "/v1/stats", None)?;
            let h = format!(
                "snapshots {}  workspaces {}  objects {}  stored {}  logical {}  dedup {:.2}x  cache hits {} misses {}",
                v["snapshots"],
                v["workspaces"],
                v["objects"],
                human_bytes(v["stored_bytes"].as_u64().unwrap_or(0)),
                human_bytes(v["logical_bytes"].as_u64().unwrap_or(0)),
                v["dedup_ratio"].as_f64().unwrap_or(0.0),
                v["cache_hits"],
                v["cache_misses"]
            );
            (v, h)
        }
        Cmd::Fsck => {
            let v = c.call("POST", "/v1/fsck", None)?;
            let errors: Vec<&str> = v["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !errors.is_empty() {
                if cli.json {
                    println!("{v}");
                }
                bail!(
                    "fsck found {} problems:\n{}",
                    errors.len(),
                    errors.join("\n")
                );
            }
            let h = format!(
                "ok: {} objects, {} snapshots, {} workspaces checked",
                v["objects_checked"], v["snapshots_checked"], v["workspaces_checked"]
            );
            (v, h)
        }
    };
    let mut out = std::io::stdout().lock();
    if cli.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else if !human.is_empty() {
        writeln!(out, "{human}")?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "mount.helios")
    {
        return mount_helper::run(&args[1..], default_socket());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses_with_every_key() {
        let f: ServeFile =
            toml::from_str(include_str!("../contrib/helios.toml")).expect("contrib/helios.toml");
        assert_eq!(f.state_dir.as_deref(), Some(Path::new("/var/lib/helios")));
        assert_eq!(f.threads, Some(2));
        assert_eq!(f.passthrough, Some(true));
        assert_eq!(f.journal_interval, Some(5.0));
        assert_eq!(f.metrics_listen.as_deref(), Some("127.0.0.1:9464"));
    }

    #[test]
    fn sizes_parse_with_binary_units_and_bad_ones_are_refused() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("2gb"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        for bad in ["", "M", "12X", "-1", "1.5G", "99999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }
}
