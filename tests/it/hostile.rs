//! Issue 8, item 8: hostile clients. Ten thousand malformed, oversized and slow
//! (slowloris) requests while `/v1/health` must keep answering within 0.5 s and nothing
//! is lost; a mountpoint inside another workspace's mount is refused.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::Daemon;

/// Sends `bytes` on a new connection, ends the request side (a body shorter than its
/// Content-Length stays short) and reads whatever comes back.
fn poke(socket: &std::path::Path, bytes: &[u8]) {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

#[test]
fn ten_thousand_bad_requests_and_health_keeps_answering() {
    let d = Daemon::start();
    let mp = d.path("ws");
    let m = mp.to_str().expect("utf8").to_string();
    d.json(&["mount", &m]);
    std::fs::write(mp.join("kept"), "kept").expect("write");
    let s1 = d.json(&["snapshot", &m]);

    // Workspaces do not nest.
    std::fs::create_dir(mp.join("inner")).expect("mkdir");
    let out = d.cli(&["mount", mp.join("inner").to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("do not nest"), "{err}");

    let socket = d.socket.clone();
    // One slow client we watch: the daemon must close it at its header deadline.
    let mut slow = UnixStream::connect(&socket).expect("connect");
    slow.write_all(b"GET /v1/health HTTP/1.1\r\nHost: h\r\n")
        .expect("write");
    let slow_since = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (socket, stop) = (socket.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let (status, _) =
                    super::http(&socket, "GET", "/v1/health", None).expect("health answers");
                assert_eq!(status, 200);
                worst = worst.max(t.elapsed());
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (worst, n)
        })
    };
    let abusers: Vec<_> = (0..4)
        .map(|kind| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for i in 0..2500u32 {
                    match kind {
                        0 => poke(&socket, format!("\x00\u{ff}GARBAGE {i}\r\n\r\n").as_bytes()),
                        1 => poke(
                            &socket,
                            format!(
                                "POST /v1/workspaces HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{{\"x\":{i}"
                            )
                            .as_bytes(),
                        ),
                        2 => poke(
                            &socket,
                            format!(
                                "POST /v1/snapshots/import HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                                64 << 20,
                                "x".repeat(4096)
                            )
                            .as_bytes(),
                        ),
                        _ => {
                            // Slowloris: a request line and half the headers, then nothing.
                            if let Ok(mut s) = UnixStream::connect(&socket) {
                                let _ = s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: h\r\n");
                                held.push(s);
                            }
                        }
                    }
                }
                held.len()
            })
        })
        .collect();
    let held: usize = abusers.into_iter().map(|a| a.join().expect("abuser")).sum();
    // Past the header deadline the slow connections are closed by the daemon.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (worst, checks) = watcher.join().expect("watcher");
    assert!(held > 2000, "{held} slow connections held");
    assert!(checks > 5, "{checks} health checks");
    eprintln!("hostile: {held} slow connections held, {checks} health checks, worst {worst:?}");
    assert!(
        worst < Duration::from_millis(500),
        "health took {worst:?} at worst during the flood"
    );
    // The header deadline is 5 s: by 7 s the daemon has closed the slow connection.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(slow_since.elapsed()));
    slow.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut rest = Vec::new();
    let closed = slow.read_to_end(&mut rest).is_ok();
    assert!(
        closed,
        "a slow client is still connected after the header deadline"
    );
    // Nothing lost: the workspace, its data and the store are whole.
    assert_eq!(
        std::fs::read_to_string(mp.join("kept")).expect("read"),
        "kept"
    );
    let s2 = d.json(&["snapshot", &m]);
    assert_eq!(s2["parent"], s1["id"]);
    assert!(d.ok(&["fsck"]).starts_with("ok"));
}

/// A body trickled slower than the daemon's idle limit (10 s without data) ends that
/// request with a clear error instead of holding the connection.
#[test]
fn a_stalled_request_body_is_cut_off() {
    let d = Daemon::start();
    let mut s = UnixStream::connect(&d.socket).expect("connect");
    s.write_all(
        b"POST /v1/snapshots/import HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"path\":",
    )
    .expect("write");
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        start.elapsed() < Duration::from_secs(18),
        "still waiting after {:?}",
        start.elapsed()
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
}
