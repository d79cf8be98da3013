//! The new mount API (fsopen, fsconfig, fsmount, move_mount), which the overlay engine
//! needs for `MOVE_MOUNT_BENEATH` (Linux 6.5) and the single-path `lowerdir+` option
//! (Linux 6.8): paths need no escaping, and a new layer can slide in under the visible
//! one so that a checkout is one atomic switch for every path lookup.

use std::ffi::CString;
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

/// The C strings a mount needs, made before `fork` (the child may not allocate).
struct Prepared {
    fstype: CString,
    options: Vec<(CString, CString)>,
    empty: CString,
    target: CString,
    beneath: bool,
}

/// Mounts an overlay of the `lowers` (read-only, top first; with `data`, a data-only
/// layer that the bottom lower's metacopy files redirect to, Linux 6.16) under `upper` with `work` at `target` (on top
/// of what is there, or with `beneath` under the topmost mount there), with the options
/// the engine's scan relies on: redirects (a renamed lower directory is one directory in
/// the upper naming where it came from), no metacopy (every copied-up file holds its
/// data), no index. It runs in a child process that holds no file
/// descriptor of this process. Mounting makes the kernel look up and statfs the lower
/// layer, a FUSE view this very process serves: if the daemon were killed while one of
/// its own threads waited on its own view, that thread could never be answered (the
/// server threads are gone, and the connection stays open while the thread lives), and
/// the daemon would hang as an unkillable zombie holding its socket and state lock. A
/// child without the /dev/fuse descriptors cannot hold the connection open: when the
/// daemon dies, the view's connection is aborted and the child's wait ends.
pub(crate) fn mount_isolated(
    lowers: &[&Path],
    data: Option<&Path>,
    upper: &Path,
    work: &Path,
    target: &Path,
    beneath: bool,
) -> std::io::Result<()> {
    let path = |p: &Path| cstr(p.as_os_str().as_bytes());
    let kv = |k: &str, v: &[u8]| -> std::io::Result<(CString, CString)> {
        Ok((cstr(k.as_bytes())?, cstr(v)?))
    };
    let mut options = Vec::new();
    for lower in lowers {
        options.push(kv("lowerdir+", lower.as_os_str().as_bytes())?);
    }
    if let Some(d) = data {
        options.push(kv("datadir+", d.as_os_str().as_bytes())?);
    }
    options.extend([
        kv("upperdir", upper.as_os_str().as_bytes())?,
        kv("workdir", work.as_os_str().as_bytes())?,
        kv("redirect_dir", b"on")?,
        kv("metacopy", b"off")?,
        kv("index", b"off")?,
    ]);
    let prepared = Prepared {
        fstype: cstr(b"overlay")?,
        options,
        empty: cstr(b"")?,
        target: path(target)?,
        beneath,
    };
    // The child runs on a stack of its own, in this memory (CLONE_VM), while this
    // thread waits (CLONE_VFORK), as posix_spawn does; it has its own descriptor table
    // (no CLONE_FILES), which it empties first. (A plain fork copies the daemon's page
    // tables: 3-5 ms per mount here.)
    let mut stack = vec![0u8; 256 << 10];
    extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `Prepared` below, alive until the parent resumes; the
        // child only makes raw syscalls on it.
        unsafe {
            libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
            child_mount(&*(arg as *const Prepared))
        }
    }
    // SAFETY: the stack is ours and outlives the child (the parent is suspended until
    // the child exits); the stack grows down from its end, 16-byte aligned.
    unsafe {
        let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
        let pid = libc::clone(
            child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &prepared as *const Prepared as *mut libc::c_void,
        );
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut status = 0;
        loop {
            if libc::waitpid(pid, &mut status, 0) >= 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else if libc::WIFEXITED(status) {
            Err(std::io::Error::from_raw_os_error(libc::WEXITSTATUS(status)))
        } else {
            Err(std::io::Error::other("the mounting child was killed"))
        }
    }
}

/// In the child: the mount, by raw syscalls; returns 0 or an errno.
unsafe fn child_mount(p: &Prepared) -> i32 {
    let errno = || {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: as for `mount_isolated`.
    unsafe {
        let fs = libc::syscall(libc::SYS_fsopen, p.fstype.as_ptr(), FSOPEN_CLOEXEC);
        if fs < 0 {
            return errno();
        }
        for (k, v) in &p.options {
            if libc::syscall(
                libc::SYS_fsconfig,
                fs,
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            ) < 0
            {
                return errno();
            }
        }
        let null = std::ptr::null::<libc::c_char>();
        if libc::syscall(libc::SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, null, null, 0) < 0 {
            return errno();
        }
        let m = libc::syscall(libc::SYS_fsmount, fs, FSMOUNT_CLOEXEC, 0);
        if m < 0 {
            return errno();
        }
        let flags = MOVE_MOUNT_F_EMPTY_PATH | if p.beneath { MOVE_MOUNT_BENEATH } else { 0 };
        if libc::syscall(
            libc::SYS_move_mount,
            m,
            p.empty.as_ptr(),
            libc::AT_FDCWD,
            p.target.as_ptr(),
            flags,
        ) < 0
        {
            return errno();
        }
        0
    }
}
