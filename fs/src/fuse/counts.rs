//! Requests the kernel sent, by opcode: how every change to the FUSE engine is judged
//! (`GET /v1/workspaces/{id}/requests`, `helios requests`, `scripts/bench requests`).
//! One relaxed atomic add per request. `forget` counts inodes forgotten (fuser hands a
//! batch forget to `forget` once per inode and does not export its batch type).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! ops {
    ($($name:ident),* $(,)?) => {
        /// A FUSE request type this engine answers.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug)]
        pub(crate) enum Op { $($name),* }
        const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

ops!(
    init,
    lookup,
    forget,
    getattr,
    setattr,
    readlink,
    mknod,
    mkdir,
    unlink,
    rmdir,
    symlink,
    rename,
    link,
    open,
    read,
    write,
    flush,
    release,
    fsync,
    opendir,
    readdir,
    readdirplus,
    releasedir,
    fsyncdir,
    statfs,
    setxattr,
    getxattr,
    listxattr,
    removexattr,
    access,
    create,
    ioctl,
    fallocate,
    lseek,
    copy_file_range,
);

/// Counters of one mount, and how many of its requests came through io_uring rings.
#[derive(Debug)]
pub(crate) struct RequestCounts([AtomicU64; NAMES.len()], AtomicU64);

impl Default for RequestCounts {
    fn default() -> Self {
        RequestCounts(
            std::array::from_fn(|_| AtomicU64::new(0)),
            AtomicU64::new(0),
        )
    }
}

thread_local! {
    /// This thread serves a FUSE-over-io_uring ring (fuser names them so).
    static RING: bool = std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with("fuser-ring-"));
}

impl RequestCounts {
    pub(crate) fn bump(&self, op: Op) {
        self.0[op as usize].fetch_add(1, Ordering::Relaxed);
        if RING.with(|r| *r) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests served by ring threads.
    pub(crate) fn through_rings(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }

    /// Every opcode with a non-zero count, in a fixed order.
    pub(crate) fn read(&self) -> Vec<(&'static str, u64)> {
        NAMES
            .iter()
            .zip(&self.0)
            .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_opcode() {
        let c = RequestCounts::default();
        c.bump(Op::lookup);
        c.bump(Op::lookup);
        c.bump(Op::copy_file_range);
        assert_eq!(c.read(), [("lookup", 2), ("copy_file_range", 1)]);
    }
}
