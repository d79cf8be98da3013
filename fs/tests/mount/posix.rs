//! POSIX behaviour of the mount: file operations and their errno, the rename matrix,
//! links, mmap, sparse and large files, xattrs, concurrency; on both engines (the
//! read-only mount is the FUSE engine's).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use helios_fs::Engine;

use super::{EngineFixture, Fixture};

both_engines!(
    files_and_directories_with_errno,
    set_group_id_directories_pass_their_group_on,
    rename_matrix,
    links_unlink_while_open_and_fifos,
    sparse_large_mmap_and_seek,
    xattrs,
    concurrent_writers,
    set_id_bits_are_cleared_as_on_ext4,
);

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .expect("an OS error")
}

fn files_and_directories_with_errno(engine: Engine) {
    let fx = EngineFixture::new(engine);
    fs::write(fx.p("a.txt"), b"hello").expect("write");
    assert_eq!(fs::read(fx.p("a.txt")).expect("read"), b"hello");
    fs::create_dir(fx.p("d")).expect("mkdir");
    fs::write(fx.p("d/inner"), b"x").expect("write");
    assert_eq!(errno(fs::create_dir(fx.p("d"))), libc::EEXIST);
    assert_eq!(errno(fs::remove_dir(fx.p("d"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::remove_file(fx.p("d"))), libc::EISDIR);
    assert_eq!(errno(fs::remove_dir(fx.p("a.txt"))), libc::ENOTDIR);
    assert_eq!(errno(fs::read(fx.p("missing"))), libc::ENOENT);
    assert_eq!(errno(fs::write(fx.p("a.txt/x"), b"")), libc::ENOTDIR);
    assert_eq!(
        errno(fs::write(fx.p(&"n".repeat(256)), b"")),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(fx.p("a.txt"))
        ),
        libc::EEXIST
    );
    // O_TRUNC and O_APPEND.
    let mut f = OpenOptions::new()
        .append(true)
        .open(fx.p("a.txt"))
        .expect("open append");
    f.write_all(b" world").expect("append");
    drop(f);
    assert_eq!(fs::read(fx.p("a.txt")).expect("read"), b"hello world");
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(fx.p("a.txt"))
        .expect("trunc");
    assert_eq!(fs::metadata(fx.p("a.txt")).expect("stat").len(), 0);
    // chmod, chown, utimens with UTIME_OMIT.
    fs::set_permissions(fx.p("a.txt"), fs::Permissions::from_mode(0o640)).expect("chmod");
    nix::unistd::chown(&fx.p("a.txt"), Some(1234.into()), Some(5678.into())).expect("chown");
    let m = fs::metadata(fx.p("a.txt")).expect("stat");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 1234, 5678));
    let t = nix::sys::time::TimeSpec::new(1_000_000, 5);
    nix::sys::stat::utimensat(
        AT_FDCWD,
        &fx.p("a.txt"),
        &nix::sys::time::TimeSpec::UTIME_OMIT,
        &t,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .expect("utimensat");
    let m = fs::metadata(fx.p("a.txt")).expect("stat");
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000, 5));
    fs::remove_file(fx.p("d/inner")).expect("unlink");
    fs::remove_dir(fx.p("d")).expect("rmdir");
    let names: Vec<_> = fs::read_dir(&fx.path)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec!["a.txt"]);
    // statfs answers; a file is not a terminal (ioctl answers ENOTTY, not ENOSYS).
    nix::sys::statvfs::statvfs(&fx.path).expect("statfs");
    let f = File::open(fx.p("a.txt")).expect("open");
    assert_eq!(nix::unistd::isatty(&f), Ok(false));
}

fn set_group_id_directories_pass_their_group_on(engine: Engine) {
    let fx = EngineFixture::new(engine);
    fs::create_dir(fx.p("d")).expect("mkdir");
    nix::unistd::chown(&fx.p("d"), None, Some(1234.into())).expect("chgrp");
    fs::set_permissions(fx.p("d"), fs::Permissions::from_mode(0o2775)).expect("chmod g+s");
    fs::write(fx.p("d/f"), b"x").expect("create");
    fs::create_dir(fx.p("d/sub")).expect("mkdir");
    let f = fs::metadata(fx.p("d/f")).expect("stat");
    let sub = fs::metadata(fx.p("d/sub")).expect("stat");
    assert_eq!((f.gid(), sub.gid()), (1234, 1234));
    assert_eq!(
        sub.mode() & 0o2000,
        0o2000,
        "subdirectories inherit set-group-ID"
    );
    assert_eq!(f.mode() & 0o2000, 0);
}

fn rename_matrix(engine: Engine) {
    let fx = EngineFixture::new(engine);
    fs::write(fx.p("f1"), b"1").expect("write");
    fs::write(fx.p("f2"), b"2").expect("write");
    fs::create_dir(fx.p("d1")).expect("mkdir");
    fs::create_dir(fx.p("d2")).expect("mkdir");
    fs::write(fx.p("d2/x"), b"x").expect("write");
    // Replace a file.
    fs::rename(fx.p("f1"), fx.p("f2")).expect("rename over file");
    assert_eq!(fs::read(fx.p("f2")).expect("read"), b"1");
    assert_eq!(errno(fs::metadata(fx.p("f1"))), libc::ENOENT);
    // File over dir, dir over file, dir over non-empty dir, dir into itself.
    assert_eq!(errno(fs::rename(fx.p("f2"), fx.p("d1"))), libc::EISDIR);
    assert_eq!(errno(fs::rename(fx.p("d1"), fx.p("f2"))), libc::ENOTDIR);
    assert_eq!(errno(fs::rename(fx.p("d1"), fx.p("d2"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::rename(fx.p("d2"), fx.p("d2/sub"))), libc::EINVAL);
    // Dir over empty dir.
    fs::rename(fx.p("d2"), fx.p("d1")).expect("dir over empty dir");
    assert_eq!(fs::read(fx.p("d1/x")).expect("read"), b"x");
    // RENAME_NOREPLACE and RENAME_EXCHANGE.
    fs::write(fx.p("g"), b"g").expect("write");
    let noreplace = renameat2(
        AT_FDCWD,
        &fx.p("g"),
        AT_FDCWD,
        &fx.p("f2"),
        RenameFlags::RENAME_NOREPLACE,
    );
    assert_eq!(noreplace, Err(nix::errno::Errno::EEXIST));
    renameat2(
        AT_FDCWD,
        &fx.p("g"),
        AT_FDCWD,
        &fx.p("d1"),
        RenameFlags::RENAME_EXCHANGE,
    )
    .expect("exchange");
    assert_eq!(fs::read(fx.p("d1")).expect("read"), b"g");
    assert_eq!(fs::read(fx.p("g/x")).expect("read"), b"x");
    // A rename across directories, then snapshot sees it.
    fs::rename(fx.p("g/x"), fx.p("moved")).expect("rename across dirs");
    let s = fx.snapshot();
    let view = fx
        .repo
        .create_workspace(Some(s.id), true, Default::default())
        .expect("view");
    assert_eq!(view.read_file("moved").expect("read"), b"x");
    assert!(view.resolve("g/x").is_err());
}

fn links_unlink_while_open_and_fifos(engine: Engine) {
    let fx = EngineFixture::new(engine);
    fs::write(fx.p("orig"), b"data").expect("write");
    fs::hard_link(fx.p("orig"), fx.p("link")).expect("link");
    assert_eq!(fs::metadata(fx.p("orig")).expect("stat").nlink(), 2);
    assert_eq!(
        fs::metadata(fx.p("orig")).expect("stat").ino(),
        fs::metadata(fx.p("link")).expect("stat").ino()
    );
    OpenOptions::new()
        .append(true)
        .open(fx.p("link"))
        .expect("open")
        .write_all(b"+more")
        .expect("append");
    assert_eq!(fs::read(fx.p("orig")).expect("read"), b"data+more");
    std::os::unix::fs::symlink("orig", fx.p("sym")).expect("symlink");
    assert_eq!(
        fs::read_link(fx.p("sym")).expect("readlink").to_str(),
        Some("orig")
    );
    assert_eq!(
        fs::read(fx.p("sym")).expect("read through symlink"),
        b"data+more"
    );
    fs::create_dir(fx.p("dir")).expect("mkdir");
    assert_eq!(
        errno(fs::hard_link(fx.p("dir"), fx.p("dirlink"))),
        libc::EPERM
    );
    // Unlink while open: the handle keeps reading and writing the data.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fx.p("orig"))
        .expect("open");
    fs::remove_file(fx.p("orig")).expect("unlink");
    fs::remove_file(fx.p("link")).expect("unlink");
    let mut s = String::new();
    f.read_to_string(&mut s).expect("read after unlink");
    assert_eq!(s, "data+more");
    f.write_all_at(b"DATA", 0).expect("write after unlink");
    let mut buf = [0u8; 4];
    f.read_exact_at(&mut buf, 0).expect("read back");
    assert_eq!(&buf, b"DATA");
    // The FUSE engine keeps the bytes of a written file in an own copy in its state.
    let data = fx
        .repo
        .workspace_dir(helios_snapshot::WorkspaceId(1))
        .join("data");
    let own_copies = || fs::read_dir(&data).map_or(0, |d| d.count());
    let before = own_copies();
    drop(f);
    assert_eq!(errno(fs::metadata(fx.p("orig"))), libc::ENOENT);
    if engine == Engine::Fuse {
        // The space of an unlinked file comes back when its last handle closes (release
        // is asynchronous: give it a moment).
        let mut after = own_copies();
        for _ in 0..100 {
            if after < before {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            after = own_copies();
        }
        assert_eq!(
            after,
            before - 1,
            "the own copy of the unlinked file is gone"
        );
    }
    nix::unistd::mkfifo(
        &fx.p("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::metadata(fx.p("pipe")).expect("stat").file_type()
    ));
}

fn sparse_large_mmap_and_seek(engine: Engine) {
    let fx = EngineFixture::new(engine);
    // Sparse: a write past the end leaves zeros, and SEEK_DATA/SEEK_HOLE answer.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(fx.p("sparse"))
        .expect("create");
    f.write_all_at(b"end", 10 << 20).expect("sparse write");
    let mut buf = vec![1u8; 4096];
    f.read_exact_at(&mut buf, 4096).expect("read hole");
    assert!(buf.iter().all(|&b| b == 0));
    let data = nix::unistd::lseek(f.as_fd(), 0, nix::unistd::Whence::SeekData).expect("SEEK_DATA");
    assert!(data >= 4096, "the hole is reported: data starts at {data}");
    // Holes take no space: stat reports the blocks the own copy really uses.
    let blocks = f.metadata().expect("stat").blocks();
    assert!(blocks < 64, "{blocks} blocks for a 10 MiB sparse file");
    drop(f);
    // A file of many chunks round-trips through a snapshot.
    let mut x = 0x1234_5678_9abc_def1u64;
    let big: Vec<u8> = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(fx.p("big"), &big).expect("write big");
    assert_eq!(fs::read(fx.p("big")).expect("read big"), big);
    // Shared writable mmap reads back, through the mount and after msync in a snapshot.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(fx.p("mapped"))
        .expect("create");
    f.set_len(8192).expect("set_len");
    #[allow(unsafe_code)]
    // SAFETY: the file is private to this test and outlives the mapping.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.expect("mmap");
    map[100..105].copy_from_slice(b"mmap!");
    map.flush().expect("msync");
    drop(map);
    let mut back = vec![0u8; 5];
    File::open(fx.p("mapped"))
        .expect("open")
        .read_exact_at(&mut back, 100)
        .expect("read");
    assert_eq!(&back, b"mmap!");
    drop(f);
    let s = fx.snapshot();
    let view = fx
        .repo
        .create_workspace(Some(s.id), true, Default::default())
        .expect("view");
    assert_eq!(view.read_file("big").expect("read"), big);
    assert_eq!(&view.read_file("mapped").expect("read")[100..105], b"mmap!");
    assert_eq!(
        view.read_file("sparse").expect("read").len(),
        (10 << 20) + 3
    );
    // copy_file_range and fallocate.
    let src = File::open(fx.p("big")).expect("open");
    let dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(fx.p("copy"))
        .expect("create");
    let n = nix::fcntl::copy_file_range(src.as_fd(), None, dst.as_fd(), None, 1 << 20)
        .expect("copy_file_range");
    assert!(n > 0);
    nix::fcntl::fallocate(dst.as_fd(), nix::fcntl::FallocateFlags::empty(), 0, 4 << 20)
        .expect("fallocate");
    drop(dst);
    assert_eq!(fs::metadata(fx.p("copy")).expect("stat").len(), 4 << 20);
    assert_eq!(fs::read(fx.p("copy")).expect("read")[..n], big[..n]);
    let mut f = File::open(fx.p("big")).expect("open");
    f.seek(SeekFrom::End(-3)).expect("seek");
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).expect("read");
    assert_eq!(tail, big[big.len() - 3..]);
}

fn xattrs(engine: Engine) {
    let fx = EngineFixture::new(engine);
    fs::write(fx.p("f"), b"x").expect("write");
    xattr::set(fx.p("f"), "user.agent", b"value").expect("setxattr");
    assert_eq!(
        xattr::get(fx.p("f"), "user.agent").expect("getxattr"),
        Some(b"value".to_vec())
    );
    let names: Vec<_> = xattr::list(fx.p("f")).expect("listxattr").collect();
    assert!(names.iter().any(|n| n == "user.agent"));
    xattr::remove(fx.p("f"), "user.agent").expect("removexattr");
    assert_eq!(xattr::get(fx.p("f"), "user.agent").expect("getxattr"), None);
    assert_eq!(errno(xattr::remove(fx.p("f"), "user.agent")), libc::ENODATA);
}

fn concurrent_writers(engine: Engine) {
    let fx = EngineFixture::new(engine);
    let shared = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(fx.p("shared"))
        .expect("create");
    std::thread::scope(|s| {
        for t in 0..4 {
            let path = fx.path.clone();
            s.spawn(move || {
                for i in 0..50 {
                    fs::write(path.join(format!("t{t}-{i}")), format!("{t}:{i}")).expect("write");
                }
            });
        }
        // Four writers to one file at disjoint offsets.
        let shared = &shared;
        for t in 0..4u8 {
            s.spawn(move || {
                for i in 0..64u64 {
                    shared
                        .write_all_at(&[b'a' + t; 16], (i * 4 + t as u64) * 16)
                        .expect("pwrite");
                }
            });
        }
    });
    for t in 0..4 {
        for i in 0..50 {
            assert_eq!(
                fs::read_to_string(fx.p(&format!("t{t}-{i}"))).expect("read"),
                format!("{t}:{i}")
            );
        }
    }
    let shared = fs::read(fx.p("shared")).expect("read");
    assert_eq!(shared.len(), 64 * 4 * 16);
    for (k, block) in shared.chunks(16).enumerate() {
        assert!(
            block.iter().all(|&b| b == b'a' + (k % 4) as u8),
            "block {k}"
        );
    }
}

#[test]
fn read_only_mount_refuses_writes() {
    let fx = Fixture::new();
    fs::write(fx.p("f"), b"x").expect("write");
    let s = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    let ro = Fixture::with(None, false, Default::default());
    drop(ro);
    let dir = tempfile::tempdir().expect("tempdir");
    let mp = dir.path().join("ro");
    fs::create_dir(&mp).expect("mkdir");
    let ws = fx
        .repo
        .create_workspace(Some(s.id), true, Default::default())
        .expect("ro ws");
    let m = helios_fs::Mount::fuse(ws, &mp, &Default::default()).expect("mount ro");
    assert_eq!(fs::read(mp.join("f")).expect("read"), b"x");
    assert_eq!(errno(fs::write(mp.join("g"), b"y")), libc::EROFS);
    assert_eq!(
        errno(OpenOptions::new().write(true).open(mp.join("f"))),
        libc::EROFS
    );
    // Drop unmounts (lazily if a process forked by a concurrent test holds a descriptor).
    drop(m);
}

/// Issue 8, item 7: writes, truncates and O_TRUNC opens by an unprivileged process, and
/// chown/chgrp by anyone, clear the set-id bits exactly as they do on ext4 — also for
/// a file that would otherwise be passed through to the kernel. Checked side by side
/// with a plain directory (the test directory's filesystem).
fn set_id_bits_are_cleared_as_on_ext4(engine: Engine) {
    let f = EngineFixture::new(engine);
    let plain = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(plain.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(&f.path, fs::Permissions::from_mode(0o755)).expect("chmod");
    // (name, mode, what to do as whom)
    let cases: &[(&str, u32, &str, bool)] = &[
        ("write", 0o6777, "printf x >> write", true),
        ("write-root", 0o6777, "printf x >> write-root", false),
        ("truncate", 0o6777, "truncate -s 1 truncate", true),
        ("otrunc", 0o6777, ": > otrunc", true),
        ("nogx", 0o2767, "printf x >> nogx", true),
        ("chown", 0o6755, "chown 1 chown", false),
        ("chgrp-nogx", 0o2745, "chgrp 1 chgrp-nogx", false),
        ("chgrp-gx", 0o2755, "chgrp 1 chgrp-gx", false),
    ];
    let mut modes = Vec::new();
    for root in [plain.path(), f.path.as_path()] {
        let mut got = Vec::new();
        for (name, mode, cmd, unprivileged) in cases {
            let p = root.join(name);
            fs::write(&p, b"data").expect("write");
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).expect("chmod");
            let mut c = std::process::Command::new("setpriv");
            if *unprivileged {
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
            }
            let out = c
                .args(["sh", "-c", cmd])
                .current_dir(root)
                .output()
                .expect("setpriv");
            assert!(
                out.status.success(),
                "{cmd} in {}: {}",
                root.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let mode = fs::metadata(&p).expect("stat").mode() & 0o7777;
            got.push((*name, mode));
        }
        modes.push(got);
    }
    assert_eq!(
        modes[1], modes[0],
        "helios (left) vs the plain directory (right)"
    );
    // And what ext4 does, spelled out: the bits went where they should.
    assert!(modes[1].contains(&("write", 0o777)), "{:?}", modes[1]);
    assert!(modes[1].contains(&("write-root", 0o6777)), "{:?}", modes[1]);
    // The new modes are what a snapshot stores.
    let s = f.snapshot();
    match f.repo.entry_at(s.id, "write").expect("entry") {
        Some(helios_snapshot::tree::EntryKind::File { attrs, .. }) => {
            assert_eq!(attrs.mode, 0o777)
        }
        other => panic!("write is {other:?}"),
    }
}

#[test]
fn writers_served_here_cost_no_flush_and_every_write_counts() {
    // Without passthrough (rootless daemons, set-id files) every write reaches the
    // daemon, so a close needs no flush round trip; a snapshot still sees each write,
    // including one made through a handle kept open across an earlier snapshot.
    let fx = Fixture::with(
        None,
        false,
        helios_fs::MountOptions {
            passthrough: false,
            ..Default::default()
        },
    );
    let flushes = || {
        fx.mount()
            .requests()
            .iter()
            .find(|(op, _)| *op == "flush")
            .map_or(0, |(_, n)| *n)
    };
    for i in 0..20 {
        fs::write(fx.p(&format!("f{i}")), format!("v{i}")).expect("write");
    }
    assert_eq!(flushes(), 0, "{:?}", fx.mount().requests());
    let mut held = OpenOptions::new()
        .write(true)
        .open(fx.p("f0"))
        .expect("open");
    let s1 = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    held.write_all(b"later").expect("write");
    drop(held);
    let s2 = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    assert_ne!(
        s1.root, s2.root,
        "the write after the first snapshot is in the second"
    );
    let view = fx
        .repo
        .create_workspace(Some(s2.id), true, Default::default())
        .expect("view");
    assert_eq!(view.read_file("f0").expect("read"), b"later");
    assert_eq!(view.read_file("f19").expect("read"), b"v19");
    assert_eq!(flushes(), 0, "{:?}", fx.mount().requests());
}

/// Issue 8, item 6: a workspace with a quota refuses writes, truncates, creates, links
/// and fallocates past it with EDQUOT through the mount (writers are served here, not
/// passed through), `df` shows the limit, and removing a file makes room again.
#[test]
fn a_quota_gives_edquot_and_df_shows_it() {
    use helios_snapshot::Quota;
    let fx = Fixture::new();
    fs::write(fx.p("before"), [1u8; 4096]).expect("write");
    let limit = 1u64 << 20;
    fx.ws()
        .set_quota(Some(Quota {
            bytes: Some(limit),
            inodes: Some(10),
        }))
        .expect("set quota");
    // df: the limit is the filesystem's size, the usage what is gone from it.
    let s = nix::sys::statvfs::statvfs(&fx.path).expect("statvfs");
    let frsize = s.fragment_size();
    assert_eq!(s.blocks() * frsize, limit / frsize * frsize);
    assert_eq!(s.blocks_available(), (limit - 4096) / frsize);
    assert_eq!(s.files(), 10);
    assert_eq!(s.files_free(), 9);

    let mut f = File::create(fx.p("big")).expect("create");
    f.write_all(&vec![2u8; (limit - 4096 - 10) as usize])
        .expect("write up to the limit");
    assert_eq!(errno(f.write_all(&[3u8; 11])), libc::EDQUOT);
    let mut before = OpenOptions::new()
        .append(true)
        .open(fx.p("before"))
        .expect("open");
    assert_eq!(errno(before.write_all(&[3u8; 11])), libc::EDQUOT);
    drop(before);
    assert_eq!(errno(f.set_len(limit)), libc::EDQUOT);
    assert_eq!(
        errno(
            nix::fcntl::fallocate(
                f.as_fd(),
                nix::fcntl::FallocateFlags::empty(),
                0,
                limit as i64
            )
            .map_err(std::io::Error::from)
        ),
        libc::EDQUOT
    );
    // What was refused left nothing behind.
    assert_eq!(
        fs::metadata(fx.p("big")).expect("stat").len(),
        limit - 4096 - 10
    );
    f.write_all(&[4u8; 10]).expect("the last 10 bytes fit");
    assert_eq!(
        errno(fs::hard_link(fx.p("big"), fx.p("big2"))),
        libc::EDQUOT
    );

    // Names: 2 used, 8 more fit.
    for i in 0..8 {
        File::create(fx.p(&format!("e{i}"))).expect("create within the limit");
    }
    assert_eq!(errno(File::create(fx.p("e8"))), libc::EDQUOT);
    assert_eq!(errno(fs::create_dir(fx.p("dir"))), libc::EDQUOT);
    assert_eq!(
        errno(std::os::unix::fs::symlink("big", fx.p("link"))),
        libc::EDQUOT
    );
    assert!(!fx.p("e8").exists());

    // Room again once a file is gone.
    drop(f);
    fs::remove_file(fx.p("big")).expect("rm");
    fs::write(fx.p("e8"), [5u8; 8192]).expect("room again");
    let ws = fx.ws().usage().expect("usage");
    assert_eq!(ws.inodes, 10);
    assert_eq!(ws.bytes, 4096 + 8192);
    let s = fx
        .mount()
        .snapshot(None, Default::default())
        .expect("snapshot");
    assert_eq!(s.bytes, 4096 + 8192);
}

/// Issue 10 item 3: where the kernel offers FUSE-over-io_uring a mount is served through
/// its rings (and through the device where it does not, or with `io_uring: false`), and
/// a session's work comes out the same either way: writes and reads served in userspace
/// up to the payload maximum (1 MiB) and past it, a listing of many pages, xattrs, links,
/// renames, removals, and the snapshot of it all.
#[test]
fn requests_come_through_io_uring_rings_where_the_kernel_offers_them() {
    let offered = helios_fs::uring_available();
    let mut roots = Vec::new();
    for io_uring in [true, false] {
        let fx = Fixture::with(
            None,
            false,
            helios_fs::MountOptions {
                io_uring,
                passthrough: false,
                ..Default::default()
            },
        );
        assert_eq!(
            fx.mount().io_uring(),
            io_uring && offered,
            "io_uring {io_uring}"
        );
        let big: Vec<u8> = (0..(3usize << 20) + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        fs::write(fx.p("big"), &big).expect("write big");
        assert_eq!(fs::read(fx.p("big")).expect("read big"), big);
        let f = File::open(fx.p("big")).expect("open");
        let mut page = vec![0u8; 1 << 20];
        f.read_exact_at(&mut page, 1 << 20)
            .expect("read 1 MiB at 1 MiB");
        assert_eq!(page, big[1 << 20..2 << 20]);
        fs::create_dir(fx.p("d")).expect("mkdir");
        for i in 0..600 {
            fs::write(fx.p(&format!("d/{i:0>40}")), i.to_string()).expect("create");
        }
        assert_eq!(fs::read_dir(fx.p("d")).expect("readdir").count(), 600);
        xattr::set(fx.p("big"), "user.k", b"v").expect("setxattr");
        assert_eq!(
            xattr::get(fx.p("big"), "user.k").expect("getxattr"),
            Some(b"v".to_vec())
        );
        fs::hard_link(fx.p("big"), fx.p("d/link")).expect("link");
        std::os::unix::fs::symlink("big", fx.p("sym")).expect("symlink");
        assert_eq!(
            fs::read_link(fx.p("sym")).expect("readlink"),
            std::path::Path::new("big")
        );
        fs::rename(
            fx.p("d/0000000000000000000000000000000000000007"),
            fx.p("seven"),
        )
        .expect("rename");
        fs::remove_file(fx.p("d/0000000000000000000000000000000000000008")).expect("unlink");
        let s = fx
            .mount()
            .snapshot(None, Default::default())
            .expect("snapshot");
        let view = fx
            .repo
            .create_workspace(Some(s.id), true, Default::default())
            .expect("view");
        assert_eq!(view.read_file("d/link").expect("read"), big);
        assert_eq!(view.read_file("seven").expect("read"), b"7");
        let rings = fx.mount().requests_through_rings();
        if fx.mount().io_uring() {
            let all: u64 = fx.mount().requests().iter().map(|(_, n)| n).sum();
            // Forgets and the init still come through the device.
            assert!(rings * 10 > all * 9, "{rings} of {all} through the rings");
        } else {
            assert_eq!(rings, 0);
        }
        roots.push(s.root);
    }
    assert_eq!(roots[0], roots[1], "both transports give the same snapshot");
}
