//! The new mount API (fsopen, fsconfig, fsmount, move_mount), which the overlay engine
//! needs for `MOVE_MOUNT_BENEATH` (Linux 6.5) and the single-path `lowerdir+` option
//! (Linux 6.8): paths need no escaping, and a new layer can slide in under the visible
//! one so that a checkout is one atomic switch for every path lookup.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_BENEATH: libc::c_uint = 0x200;

fn cstr(s: &[u8]) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_long, what: &str) -> std::io::Result<libc::c_long> {
    if r < 0 {
        let e = std::io::Error::last_os_error();
        Err(std::io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(r)
    }
}

/// A configured, not yet attached overlay mount.
pub(crate) struct Detached(OwnedFd);

/// Creates an overlay of `lower` (read-only) under `upper` with `work`, with the options
/// the engine's scan relies on: redirects (a renamed lower directory is one directory
/// in the upper naming where it came from), no metacopy (every copied-up file holds its
/// data), no index.
pub(crate) fn overlay(lower: &Path, upper: &Path, work: &Path) -> std::io::Result<Detached> {
    // SAFETY: plain syscalls; every pointer is a valid NUL-terminated string that lives
    // across the call, and returned fds are owned at once.
    unsafe {
        let name = cstr(b"overlay")?;
        let fs = check(
            libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC),
            "fsopen(overlay)",
        )?;
        let fs = OwnedFd::from_raw_fd(fs as i32);
        let set = |key: &str, value: &[u8]| -> std::io::Result<()> {
            let k = cstr(key.as_bytes())?;
            let v = cstr(value)?;
            check(
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs.as_raw_fd(),
                    FSCONFIG_SET_STRING,
                    k.as_ptr(),
                    v.as_ptr(),
                    0,
                ),
                &format!("overlay option {key}"),
            )
            .map(drop)
        };
        set("lowerdir+", lower.as_os_str().as_bytes())?;
        set("upperdir", upper.as_os_str().as_bytes())?;
        set("workdir", work.as_os_str().as_bytes())?;
        set("redirect_dir", b"on")?;
        set("metacopy", b"off")?;
        set("index", b"off")?;
        check(
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            ),
            "create the overlay",
        )?;
        let m = check(
            libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0),
            "fsmount(overlay)",
        )?;
        Ok(Detached(OwnedFd::from_raw_fd(m as i32)))
    }
}

impl Detached {
    /// Attaches the mount at `target`: on top of what is there, or with `beneath`, under
    /// the topmost mount at `target` (hidden until that one is unmounted).
    pub(crate) fn attach(self, target: &Path, beneath: bool) -> std::io::Result<()> {
        let t = cstr(target.as_os_str().as_bytes())?;
        let empty = cstr(b"")?;
        let flags = MOVE_MOUNT_F_EMPTY_PATH | if beneath { MOVE_MOUNT_BENEATH } else { 0 };
        // SAFETY: as above.
        unsafe {
            check(
                libc::syscall(
                    libc::SYS_move_mount,
                    self.0.as_raw_fd(),
                    empty.as_ptr(),
                    libc::AT_FDCWD,
                    t.as_ptr(),
                    flags,
                ),
                if beneath {
                    "move_mount beneath"
                } else {
                    "move_mount"
                },
            )?;
        }
        Ok(())
    }
}
