//! `mount.helios`: the helper `mount -t helios SNAPSHOT DIR` runs (the `helios` binary
//! under that name, e.g. a symlink `/sbin/mount.helios`). It asks the daemon for a new
//! workspace from SNAPSHOT (`empty` for none) mounted at DIR that lives as long as its
//! mount: `umount DIR` unmounts it and the daemon drops the workspace. An fstab line:
//!
//! ```text
//! s42  /srv/agent  helios  engine=overlay,socket=/run/helios/helios.sock,nofail  0 0
//! ```
//!
//! Called as mount(8) calls helpers: `mount.helios SPEC DIR [-sfnvrw] [-N ns] [-o
//! OPTIONS] [-t TYPE]`. Exit codes as mount(8)'s: 1 bad usage, 32 the mount failed.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use crate::client::Client;

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    from: Option<String>,
    dir: PathBuf,
    engine: Option<String>,
    socket: Option<PathBuf>,
    /// `-r` or `-o ro`: a read-only mount of the snapshot.
    read_only: bool,
    /// `-f`: do everything but the mount.
    fake: bool,
}

/// Mount options that concern mount(8) or fstab, not helios.
fn ignored(opt: &str) -> bool {
    matches!(
        opt,
        "defaults" | "rw" | "auto" | "noauto" | "nofail" | "_netdev" | "user" | "nouser"
    ) || opt.starts_with("x-")
        || opt.starts_with("comment=")
}

fn parse(args: &[String]) -> Result<Request, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut read_only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.push(it.next().ok_or("-o needs options")?.clone()),
            "-t" | "-N" => {
                it.next().ok_or(format!("{a} needs a value"))?;
            }
            "-f" => fake = true,
            "-s" | "-n" | "-v" | "-w" => {}
            "-r" => read_only = true,
            s if s.starts_with("-o") => options.push(s[2..].to_string()),
            s if s.starts_with('-') => return Err(format!("unknown flag {s}")),
            s => positional.push(s.to_string()),
        }
    }
    let [spec, dir] = positional.as_slice() else {
        return Err("usage: mount.helios SNAPSHOT|empty DIR [-o engine=...,socket=...]".into());
    };
    let mut req = Request {
        from: (spec != "empty" && spec != "none").then(|| spec.clone()),
        dir: PathBuf::from(dir),
        engine: None,
        socket: None,
        read_only,
        fake,
    };
    for opt in options.iter().flat_map(|o| o.split(',')) {
        match opt.split_once('=') {
            Some(("engine", v)) => req.engine = Some(v.to_string()),
            Some(("socket", v)) => req.socket = Some(PathBuf::from(v)),
            _ if opt.is_empty() || ignored(opt) => {}
            _ if opt == "ro" => req.read_only = true,
            _ => {
                return Err(format!(
                    "unknown mount option {opt:?} (helios takes engine=, socket= and ro)"
                ));
            }
        }
    }
    Ok(req)
}

/// Runs as `mount.helios` with `args` (after the program name).
pub fn run(args: &[String], default_socket: PathBuf) -> ExitCode {
    let req = match parse(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mount.helios: {e}");
            return ExitCode::from(1);
        }
    };
    if req.fake {
        return ExitCode::SUCCESS;
    }
    let dir = std::path::absolute(&req.dir)
        .and_then(|d| d.canonicalize())
        .unwrap_or(req.dir.clone());
    let socket = req.socket.unwrap_or(default_socket);
    let result = Client::new(&socket).and_then(|c| {
        c.call(
            "POST",
            "/v1/workspaces",
            Some(json!({
                "mountpoint": dir,
                "from": req.from,
                "engine": req.engine,
                "drop_on_unmount": true,
                "read_only": req.read_only,
            })),
        )
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mount.helios: {}: {e:#}", dir.display());
            ExitCode::from(32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn parses_what_mount_passes() {
        let r = parse(&args(
            "s4 /mnt/w -o rw,engine=overlay,socket=/tmp/h.sock,noauto",
        ))
        .expect("ok");
        assert_eq!(
            r,
            Request {
                from: Some("s4".into()),
                dir: "/mnt/w".into(),
                engine: Some("overlay".into()),
                socket: Some("/tmp/h.sock".into()),
                read_only: false,
                fake: false,
            }
        );
        let r = parse(&args(
            "empty /mnt/w -n -o defaults,x-systemd.requires=helios.service",
        ))
        .expect("ok");
        assert_eq!(r.from, None);
        assert_eq!(r.engine, None);
        assert!(parse(&args("-f s1 /w")).expect("ok").fake);
        assert!(parse(&args("s1 /w -o ro")).expect("ok").read_only);
        assert!(parse(&args("-r s1 /w")).expect("ok").read_only);
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let e = parse(&args("s1 /w -o engine=fuse,size=1g")).expect_err("unknown option");
        assert!(e.contains("size=1g"), "{e}");
        assert!(parse(&args("s1")).is_err());
        assert!(parse(&args("s1 /w -o")).is_err());
    }
}
