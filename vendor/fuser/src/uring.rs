//! HELIOS PATCH: the FUSE-over-io_uring transport (kernel ABI 7.42, Linux 6.14+).
//!
//! After `FUSE_INIT` negotiated `FUSE_OVER_IO_URING`, one ring per possible CPU registers a
//! few entries (a 288-byte header buffer and a payload buffer each) with `/dev/fuse`
//! through `IORING_OP_URING_CMD`. Once every CPU's queue has an entry, the kernel stops
//! queueing requests for the device and hands each to the ring of the CPU its caller runs
//! on; the reply goes back in the same entry, committed together with the fetch of the
//! next request (`COMMIT_AND_FETCH`), so a request costs one `io_uring_enter` and no
//! cross-CPU wake-up: each ring's thread is pinned to its CPU. Forgets and interrupts
//! still come through the device, whose read loops keep running.
//!
//! Layout (include/uapi/linux/fuse.h): the header buffer holds `fuse_in_header` (on
//! fetch) or `fuse_out_header` (on commit) in its first 128 bytes, the opcode's fixed
//! argument (`in_args[0]`) in the next 128, then `fuse_uring_ent_in_out` (flags,
//! commit_id, payload_sz, padding, reserved); the payload buffer holds every other
//! argument (names, write data) and, on commit, the reply's body.

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use log::{debug, error, warn};
use parking_lot::Mutex;

use crate::Filesystem;
use crate::channel::ChannelSender;
use crate::dev_fuse::DevFuse;
use crate::ll::Operation;
use crate::reply::ReplyEmpty;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

const IN_OUT: usize = 128;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = IN_OUT + OP_IN;
const HEADER: usize = ENT_IN_OUT + 32;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// The payload buffer the kernel requires at least (`FUSE_MIN_READ_BUFFER`).
const MIN_PAYLOAD: usize = 8192;

/// The number of queues the kernel keeps: one per possible CPU (`num_possible_cpus`).
pub(crate) fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    s.trim()
        .split(',')
        .filter_map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
        .max()
        .map_or(1, |m| m + 1)
}

/// One registered entry's buffers. The kernel reads and writes them while the entry is
/// registered; userspace touches them only between a fetch's completion and the commit.
struct Entry {
    header: Box<UnsafeCell<[u8; HEADER]>>,
    /// `payload_len` bytes from `Box::into_raw` (zeroed pages, touched only when used).
    payload: *mut u8,
    payload_len: usize,
    iov: Box<[libc::iovec; 2]>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: `payload` came from `Box::<[u8]>::into_raw` with this length.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.payload,
                self.payload_len,
            )));
        }
    }
}

/// A ring of one CPU's queue.
pub(crate) struct Queue {
    qid: u16,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    /// Serializes pushes to the submission queue (replies may come from any thread).
    sq: Mutex<()>,
    entries: Vec<Entry>,
    dev: Arc<DevFuse>,
    thread: std::thread::ThreadId,
}

// SAFETY: the entries' buffers are shared with the kernel, not between threads: an entry
// is written by the one reply of the request it holds (a `Slot`, used once) and read by
// the queue's thread only after the kernel completed its fetch.
#[allow(unsafe_code)]
unsafe impl Sync for Queue {}
#[allow(unsafe_code)]
unsafe impl Send for Queue {}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("qid", &self.qid).finish()
    }
}

/// The entry a request came in: its reply commits it.
#[derive(Clone, Debug)]
pub(crate) struct Slot(Arc<SlotInner>);

#[derive(Debug)]
struct SlotInner {
    queue: Arc<Queue>,
    idx: usize,
    commit_id: u64,
    used: AtomicBool,
}

impl Slot {
    /// Writes the reply (`fuse_out_header`, then its body) into the entry and commits it,
    /// fetching the entry's next request.
    pub(crate) fn commit(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<()> {
        let s = &self.0;
        if s.used.swap(true, Ordering::AcqRel) {
            return Err(io::Error::other("ring entry replied twice"));
        }
        let q = &s.queue;
        let e = &q.entries[s.idx];
        let body: usize = bufs.iter().skip(1).map(|b| b.len()).sum();
        let head = bufs.first().map_or(&[][..], |b| &b[..]);
        #[allow(unsafe_code)]
        // SAFETY: the kernel handed this entry to userspace with the request and takes it
        // back only with the commit below; this slot is its only writer (used once).
        unsafe {
            let h = &mut *e.header.get();
            h[..IN_OUT].fill(0);
            let mut sz = 0usize;
            if head.len() != OUT_HEADER || body > e.payload_len {
                // Cannot happen for a well-formed reply within max_write; answer EIO.
                error!("ring reply of {} + {body} bytes does not fit", head.len());
                let eio: [u8; OUT_HEADER] = out_header(-libc::EIO, s.commit_id);
                h[..OUT_HEADER].copy_from_slice(&eio);
            } else {
                h[..OUT_HEADER].copy_from_slice(head);
                let p = e.payload;
                for b in bufs.iter().skip(1) {
                    std::ptr::copy_nonoverlapping(b.as_ptr(), p.add(sz), b.len());
                    sz += b.len();
                }
            }
            let t = &mut h[ENT_IN_OUT..];
            t.fill(0);
            t[8..16].copy_from_slice(&s.commit_id.to_ne_bytes());
            t[16..20].copy_from_slice(&(sz as u32).to_ne_bytes());
        }
        q.push(q.sqe(CMD_COMMIT_AND_FETCH, s.idx, s.commit_id));
        if std::thread::current().id() != q.thread {
            // The queue's thread may be asleep in its wait: submit from here.
            q.ring.submit()?;
        }
        Ok(())
    }
}

fn out_header(error: i32, unique: u64) -> [u8; OUT_HEADER] {
    let mut h = [0u8; OUT_HEADER];
    h[..4].copy_from_slice(&(OUT_HEADER as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

impl Queue {
    fn new(qid: u16, depth: usize, payload: usize, dev: Arc<DevFuse>) -> io::Result<Queue> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .build((depth as u32 * 2).next_power_of_two())?;
        let payload = payload.max(MIN_PAYLOAD);
        let entries = (0..depth)
            .map(|_| {
                let header = Box::new(UnsafeCell::new([0u8; HEADER]));
                let p = Box::into_raw(vec![0u8; payload].into_boxed_slice()).cast::<u8>();
                let iov = Box::new([
                    libc::iovec {
                        iov_base: header.get().cast(),
                        iov_len: HEADER,
                    },
                    libc::iovec {
                        iov_base: p.cast(),
                        iov_len: payload,
                    },
                ]);
                Entry {
                    header,
                    payload: p,
                    payload_len: payload,
                    iov,
                }
            })
            .collect();
        Ok(Queue {
            qid,
            ring,
            sq: Mutex::new(()),
            entries,
            dev,
            thread: std::thread::current().id(),
        })
    }

    fn sqe(&self, cmd: u32, idx: usize, commit_id: u64) -> squeue::Entry128 {
        let mut area = [0u8; 80];
        area[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        area[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let mut op = opcode::UringCmd80::new(types::Fd(self.dev.as_raw_fd()), cmd).cmd(area);
        if cmd == CMD_REGISTER {
            op = op.addr(Some(self.entries[idx].iov.as_ptr() as u64));
        }
        let sqe = op.build().user_data(idx as u64);
        if cmd != CMD_REGISTER {
            return sqe;
        }
        // REGISTER passes two iovecs: `sqe->len` = 2, which the builder does not set.
        #[allow(unsafe_code)]
        // SAFETY: `Entry128` is `repr(C)`, 128 bytes: the kernel's `io_uring_sqe` (whose
        // `len` is the u32 at byte 24) followed by the rest of the command area.
        unsafe {
            let mut raw: [u8; 128] = std::mem::transmute(sqe);
            raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
            std::mem::transmute::<[u8; 128], squeue::Entry128>(raw)
        }
    }

    fn push(&self, sqe: squeue::Entry128) {
        let _g = self.sq.lock();
        loop {
            #[allow(unsafe_code)]
            // SAFETY: pushes are serialized by `sq`; the entry's buffers outlive the ring
            // (see `serve`).
            let pushed = unsafe { self.ring.submission_shared().push(&sqe).is_ok() };
            if pushed {
                return;
            }
            // Full (more commits in flight than entries: cannot happen at depth * 2).
            let _ = self.ring.submit();
        }
    }
}

fn pin_to(cpu: usize) {
    #[allow(unsafe_code)]
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            debug!(
                "fuse ring {cpu}: not pinned: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Registers queue `qid`'s entries and serves its requests until the connection ends.
pub(crate) fn serve<FS: Filesystem>(
    se: SessionEventLoop<FS>,
    qid: u16,
    depth: usize,
    payload: usize,
) -> io::Result<()> {
    pin_to(qid as usize);
    let dev = se.ch.device().clone();
    let q = Arc::new(Queue::new(qid, depth, payload, dev.clone())?);
    for idx in 0..depth {
        q.push(q.sqe(CMD_REGISTER, idx, 0));
    }
    let mut alive = depth;
    // u64s: the request's structs are read in place and need their alignment.
    let mut buf: Vec<u64> = vec![0; (IN_HEADER + OP_IN + q.entries[0].payload_len).div_ceil(8)];
    let mut done = Vec::with_capacity(depth);
    let mut result = Ok(());
    while alive > 0 {
        match q.ring.submit_and_wait(1) {
            Ok(_) => {}
            // Interrupted, or short of memory or completion room for a moment: a ring
            // thread that gave up would leave its CPU's callers waiting on its entry.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                if e.raw_os_error() != Some(libc::EINTR) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                continue;
            }
            Err(e) => {
                error!("fuse ring {qid}: {e}");
                result = Err(e);
                break;
            }
        }
        done.clear();
        #[allow(unsafe_code)]
        // SAFETY: only this thread reads the completion queue.
        unsafe {
            done.extend(
                q.ring
                    .completion_shared()
                    .map(|c| (c.user_data() as usize, c.result())),
            );
        }
        for &(idx, res) in &done {
            if res < 0 {
                // The connection ended (ENOTCONN, cancelled) or the kernel refused the
                // entry: it is no longer registered.
                alive -= 1;
                let e = io::Error::from_raw_os_error(-res);
                if ![libc::ENOTCONN, libc::ECANCELED, libc::ENODEV].contains(&-res) {
                    warn!("fuse ring {qid}: entry {idx}: {e}");
                }
                continue;
            }
            serve_one(&se, &q, idx, &mut buf);
        }
    }
    if alive > 0 {
        // Entries the kernel may still write into: their buffers must outlive it.
        std::mem::forget(q);
    }
    result
}

/// Rebuilds the request of entry `idx` as the device would deliver it (header, fixed
/// argument, payload) and dispatches it; its reply commits the entry.
fn serve_one<FS: Filesystem>(
    se: &SessionEventLoop<FS>,
    q: &Arc<Queue>,
    idx: usize,
    buf: &mut [u64],
) {
    let e = &q.entries[idx];
    #[allow(unsafe_code)]
    // SAFETY: a u64 slice viewed as its bytes.
    let buf: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), buf.len() * 8) };
    let commit_id;
    let total;
    #[allow(unsafe_code)]
    // SAFETY: the kernel completed this entry's fetch: it is with userspace until its
    // commit, and nothing else reads or writes it meanwhile.
    unsafe {
        let h = &*e.header.get();
        let len = u32::from_ne_bytes(h[..4].try_into().unwrap_or_default()) as usize;
        commit_id = u64::from_ne_bytes(
            h[ENT_IN_OUT + 8..ENT_IN_OUT + 16]
                .try_into()
                .unwrap_or_default(),
        );
        let payload_sz = u32::from_ne_bytes(
            h[ENT_IN_OUT + 16..ENT_IN_OUT + 20]
                .try_into()
                .unwrap_or_default(),
        ) as usize;
        let op = len.saturating_sub(IN_HEADER + payload_sz);
        if len < IN_HEADER + payload_sz || op > OP_IN || payload_sz > e.payload_len {
            error!(
                "fuse ring {}: malformed request (len {len}, payload {payload_sz})",
                q.qid
            );
            let slot = Slot(Arc::new(SlotInner {
                queue: q.clone(),
                idx,
                commit_id,
                used: AtomicBool::new(false),
            }));
            let _ = slot.commit(&[io::IoSlice::new(&out_header(-libc::EIO, commit_id))]);
            return;
        }
        buf[..IN_HEADER].copy_from_slice(&h[..IN_HEADER]);
        buf[IN_HEADER..IN_HEADER + op].copy_from_slice(&h[IN_OUT..IN_OUT + op]);
        std::ptr::copy_nonoverlapping(e.payload, buf.as_mut_ptr().add(IN_HEADER + op), payload_sz);
        total = len;
    }
    let slot = Slot(Arc::new(SlotInner {
        queue: q.clone(),
        idx,
        commit_id,
        used: AtomicBool::new(false),
    }));
    let sender = ChannelSender::ring(q.dev.clone(), slot.clone());
    match RequestWithSender::new(sender, &buf[..total]) {
        Some(req) => {
            if let Ok(Operation::Destroy(_)) = req.request.operation() {
                req.reply::<ReplyEmpty>().ok();
            } else {
                req.dispatch(se);
            }
        }
        None => {
            let _ = slot.commit(&[io::IoSlice::new(&out_header(-libc::EIO, commit_id))]);
        }
    }
}
