//! FUSE mounts for a daemon without root: through the setuid `fusermount3` (Debian
//! `fuse3`), as libfuse does. An unprivileged process may not mount(2); `fusermount3`
//! opens `/dev/fuse` (as the calling user: the device must be world-accessible, 0666,
//! as distributions' udev rules make it), mounts, and hands the device back over a
//! socket named by `_FUSE_COMMFD`.

use std::io::{IoSliceMut, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

const FUSERMOUNT: &str = "fusermount3";

/// True when this process mounts through `fusermount3` (it is not root).
pub(crate) fn needed() -> bool {
    !nix::unistd::geteuid().is_root()
}

/// Mounts a FUSE filesystem at `mountpoint` with `options` (fusermount3's `-o`, e.g.
/// `fsname=helios,subtype=helios,default_permissions`); returns the `/dev/fuse`
/// descriptor to serve it on.
pub(crate) fn mount(mountpoint: &Path, options: &str) -> std::io::Result<OwnedFd> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs: OwnedFd = theirs.into();
    // The child inherits this end (and only until it exits: ours is closed on exec).
    nix::fcntl::fcntl(
        &theirs,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )?;
    let mut child = Command::new(FUSERMOUNT)
        .arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("run {FUSERMOUNT}: {e}")))?;
    drop(theirs);
    let received = receive_fd(&ours);
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let status = child.wait()?;
    match received {
        Ok(Some(fd)) if status.success() => Ok(fd),
        // Its message names itself ("fusermount3: ...").
        Ok(_) | Err(_) if !stderr.trim().is_empty() => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            stderr.trim().to_string(),
        )),
        Err(e) => Err(e),
        Ok(_) => Err(std::io::Error::other(format!(
            "{FUSERMOUNT} exited with {status} without passing a descriptor"
        ))),
    }
}

/// The descriptor `fusermount3` sends, if it sends one.
fn receive_fd(sock: &std::os::unix::net::UnixStream) -> std::io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed `fd` in this process for this message
            // (SCM_RIGHTS); nothing else owns it.
            #[allow(unsafe_code)]
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    Ok(None)
}

/// Unmounts a FUSE mount this process made through `fusermount3`; `lazy` detaches a
/// busy one.
pub(crate) fn unmount(mountpoint: &Path, lazy: bool) -> std::io::Result<()> {
    let mut c = Command::new(FUSERMOUNT);
    c.arg("-u");
    if lazy {
        c.arg("-z");
    }
    let out = c
        .arg("--")
        .arg(mountpoint)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| std::io::Error::new(e.kind(), format!("run {FUSERMOUNT}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "{FUSERMOUNT} -u {}: {}",
        mountpoint.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Detaches whatever is mounted at `path`: umount2(MNT_DETACH), or for a process
/// without root, `fusermount3 -u -z` (its own FUSE mounts).
pub fn detach(path: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) if needed() => unmount(path, true),
        Err(e) => Err(e.into()),
    }
}
