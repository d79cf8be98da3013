//! Randomized differential test: the same operation sequences in a mount and in a plain
//! temporary directory must leave the same trees and the same errors.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use proptest::prelude::*;

use super::{Fixture, tree};

#[derive(Clone, Debug)]
enum Op {
    Write(usize, u16, Vec<u8>),
    Truncate(usize, u16),
    Mkdir(usize),
    Rmdir(usize),
    Unlink(usize),
    Rename(usize, usize),
    Symlink(usize, usize),
    Link(usize, usize),
}

const PATHS: &[&str] = &["a", "b", "a/x", "a/y", "b/x", "a/x/z"];

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        4 => (p.clone(), 0u16..2000, prop::collection::vec(any::<u8>(), 1..64)).prop_map(|(a, o, d)| Op::Write(a, o, d)),
        1 => (p.clone(), 0u16..500).prop_map(|(a, s)| Op::Truncate(a, s)),
        3 => p.clone().prop_map(Op::Mkdir),
        1 => p.clone().prop_map(Op::Rmdir),
        1 => p.clone().prop_map(Op::Unlink),
        2 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Symlink(a, b)),
        1 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Link(a, b)),
    ]
}

fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |i: usize| root.join(PATHS[i]);
    let r = match op {
        Op::Write(i, off, data) => fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(p(*i))
            .and_then(|f| f.write_all_at(data, *off as u64)),
        Op::Truncate(i, size) => fs::OpenOptions::new()
            .write(true)
            .open(p(*i))
            .and_then(|f| f.set_len(*size as u64)),
        Op::Mkdir(i) => fs::create_dir(p(*i)),
        Op::Rmdir(i) => fs::remove_dir(p(*i)),
        Op::Unlink(i) => fs::remove_file(p(*i)),
        Op::Rename(a, b) => fs::rename(p(*a), p(*b)),
        Op::Symlink(a, b) => std::os::unix::fs::symlink(PATHS[*a], p(*b)),
        Op::Link(a, b) => fs::hard_link(p(*a), p(*b)),
    };
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn mount_behaves_like_a_plain_directory(ops in prop::collection::vec(op(), 1..40), snap_at in 0usize..40) {
        let fx = Fixture::new();
        let plain = tempfile::tempdir().expect("tempdir");
        for (step, op) in ops.iter().enumerate() {
            let want = apply(plain.path(), op);
            let got = apply(&fx.path, op);
            prop_assert_eq!(got, want, "step {}: {:?}", step, op);
            if step == snap_at {
                fx.mount().snapshot(None, Default::default()).expect("snapshot");
            }
        }
        prop_assert_eq!(tree(&fx.path), tree(plain.path()));
        // The snapshot of the final state exports to the same tree.
        let s = fx.mount().snapshot(None, Default::default()).expect("snapshot");
        let out = tempfile::tempdir().expect("tempdir");
        fx.repo.export(s.id, &out.path().join("e")).expect("export");
        prop_assert_eq!(tree(&out.path().join("e")), tree(plain.path()));
    }
}
