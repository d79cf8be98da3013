//! Issue 11, item 8: operations. `helios serve --config FILE` (TOML; flags win; unknown
//! keys refused), Prometheus metrics over TCP (`metrics_listen`: GET /metrics only), and
//! systemd socket activation (`systemd-socket-activate`, as the unit in
//! `contrib/systemd` uses it).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BIN;

/// A `helios serve` child; dropping it stops it.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while self.0.try_wait().ok().flatten().is_none()
            && start.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_socket(socket: &Path, log: &Path) {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no daemon on {}: {}",
            socket.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cli(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("helios")
}

/// A free TCP port on the loopback (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let start = Instant::now();
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(10), "connect: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

#[test]
fn serve_reads_a_config_file_and_serves_metrics_over_tcp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("from-config.sock");
    let port = free_port();
    let config = dir.path().join("helios.toml");
    std::fs::write(
        &config,
        format!(
            "# helios serve --config\nstate_dir = {:?}\nsocket = {:?}\nthreads = 1\n\
             journal_interval = 0\nmetrics_listen = \"127.0.0.1:{port}\"\n",
            dir.path().join("state"),
            socket
        ),
    )
    .expect("config");
    let log = dir.path().join("log");
    let _d = Serve(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("serve"),
    );
    wait_for_socket(&socket, &log);
    assert!(
        dir.path().join("state/daemon.lock").exists(),
        "state_dir from the file"
    );
    let src = dir.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("f"), b"x").expect("write");
    assert!(
        cli(&socket, &["import", src.to_str().expect("utf-8")])
            .status
            .success()
    );
    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{body}");
    for metric in ["helios_store_objects", "helios_snapshots"] {
        assert!(body.contains(metric), "{metric} in {body}");
    }
    // Nothing but the metrics over TCP.
    let (code, body) = http_get(port, "/v1/health");
    assert_eq!(code, 404, "{body}");
    let (code, _) = http_get(port, "/v1/workspaces");
    assert_eq!(code, 404);
}

#[test]
fn a_bad_config_is_refused_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, named) in [
        ("state_dir = \"/tmp/x\"\nsockett = \"/tmp/s\"\n", "sockett"),
        ("metrics_listen = \"localhost\"\n", "metrics_listen"),
        ("threads = \"many\"\n", "threads"),
        ("state_dir = \n", "helios.toml"),
    ] {
        let config = dir.path().join("helios.toml");
        std::fs::write(&config, text).expect("config");
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .expect("serve");
        assert!(!out.status.success(), "{text:?} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(named),
            "{text:?}: the error names {named:?}: {err}"
        );
    }
    let out = Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/helios.toml"])
        .output()
        .expect("serve");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/helios.toml"));
}

#[test]
fn serve_takes_a_socket_from_systemd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("activated.sock");
    let log = dir.path().join("log");
    let _d = Serve(
        Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(&socket)
            .arg("--")
            .arg(BIN)
            .args(["serve", "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("unused.sock"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("systemd-socket-activate (Debian systemd)"),
    );
    // systemd-socket-activate listens first and starts the daemon at the first
    // connection, handing it the socket.
    wait_for_socket(&socket, &log);
    let out = cli(&socket, &["stats"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("socket activation"), "{text}");
    assert!(
        !dir.path().join("unused.sock").exists(),
        "the daemon bound no socket of its own"
    );
}
