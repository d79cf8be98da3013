//! The Merkle tree: directory nodes and file contents as store objects.
//!
//! A directory node has two hashes. Its *storage hash* names the stored bytes, which
//! include mtimes and children's storage hashes. Its *fingerprint* covers only content
//! (names, kinds, modes, owners, sizes, file contents, symlink targets, xattrs and the
//! children's fingerprints), so equal files give an equal fingerprint whatever the time
//! and the order of operations that produced them. Layouts: `docs/format.md`.
//!
//! Modules: `encode` (nodes, pages, fingerprints), `decode` (nodes, pages, indexes, and
//! the raw view that counts changes), `content` (file contents and chunking).

use std::io::Read;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::name::Name;
use crate::store::{ObjectWriter, Store};

mod content;
mod decode;
mod encode;

pub use content::{chunks_of, hash_file, parse_chunk_list, store_file, write_content};
pub(crate) use decode::decode_plain;
pub use decode::{PageRef, base_pages, count_changes, count_page_changes, dir_objects};
use decode::{Reader, decode_entries, parse_index};
pub(crate) use encode::encode_plain;
pub use encode::{encode_dir, encode_index, encode_page};

/// Magic prefix of a stored directory node.
const DIR_MAGIC: &[u8; 4] = b"HDN1";
/// Magic prefix of the fingerprint preimage of a directory.
const FP_MAGIC: &[u8; 4] = b"HFP1";
/// Magic prefix of a chunk list.
const LIST_MAGIC: &[u8; 4] = b"HCL1";
/// Magic prefix of a large directory's page index.
const INDEX_MAGIC: &[u8; 4] = b"HDX1";
/// Magic prefix of a page of a large directory.
const PAGE_MAGIC: &[u8; 4] = b"HDP1";
/// Fingerprint preimage prefixes of a page index and of a page.
const INDEX_FP_MAGIC: &[u8; 4] = b"HFX1";
const PAGE_FP_MAGIC: &[u8; 4] = b"HFQ1";
/// Average entries per page of a large directory (boundaries are content-defined).
pub const PAGE_AVG: u64 = 32;
/// Most entries in one page.
pub const PAGE_MAX: usize = 128;

/// Files larger than this are split by content-defined chunking.
pub const CHUNK_THRESHOLD: usize = 128 << 10;
/// FastCDC minimum chunk size.
pub const CHUNK_MIN: usize = 16 << 10;
/// FastCDC average chunk size.
pub const CHUNK_AVG: usize = 64 << 10;
/// FastCDC maximum chunk size.
pub const CHUNK_MAX: usize = 256 << 10;
/// The longest symlink target accepted (PATH_MAX).
pub const TARGET_MAX: usize = 4095;

const KIND_FILE: u8 = 1;
const KIND_DIR: u8 = 2;
const KIND_SYMLINK: u8 = 3;
const KIND_FIFO: u8 = 4;
const KIND_CHAR: u8 = 5;
const KIND_BLOCK: u8 = 6;
const KIND_SOCKET: u8 = 7;

/// A special file: what it is, and its device number for devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    /// A named pipe.
    Fifo,
    /// A character device with this device number.
    Char(u64),
    /// A block device with this device number.
    Block(u64),
    /// A Unix domain socket's name.
    Socket,
}

impl Special {
    fn code(self) -> u8 {
        match self {
            Special::Fifo => KIND_FIFO,
            Special::Char(_) => KIND_CHAR,
            Special::Block(_) => KIND_BLOCK,
            Special::Socket => KIND_SOCKET,
        }
    }

    /// The device number (0 for pipes and sockets).
    pub fn rdev(self) -> u64 {
        match self {
            Special::Char(d) | Special::Block(d) => d,
            _ => 0,
        }
    }

    fn put_rdev(self, out: &mut Vec<u8>) {
        if let Special::Char(d) | Special::Block(d) = self {
            out.extend_from_slice(&d.to_be_bytes());
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub type Nanos = i64;

/// Attributes kept for every node.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Attrs {
    /// Permission bits and set-id/sticky bits (`0o7777`); the file type is the kind.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time; stored, but outside the fingerprint.
    pub mtime: Nanos,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A file's content: one chunk, or a chunk list for large files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Content {
    /// The object holding the bytes (a chunk) or the chunk list.
    pub hash: Hash,
    /// True when `hash` names a chunk list.
    pub chunked: bool,
    /// Length in bytes.
    pub size: u64,
}

/// What a directory entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File {
        /// Attributes.
        attrs: Attrs,
        /// Content.
        content: Content,
    },
    /// A directory; its attributes live in its node.
    Dir {
        /// Storage hash of the child node.
        node: Hash,
        /// Fingerprint of the child node.
        fp: Hash,
        /// Total bytes of the files below it (for statistics).
        bytes: u64,
    },
    /// A symbolic link.
    Symlink {
        /// Attributes.
        attrs: Attrs,
        /// Target, as bytes.
        target: Vec<u8>,
    },
    /// A named pipe, device or socket.
    Special {
        /// Attributes.
        attrs: Attrs,
        /// Which.
        special: Special,
    },
}

impl EntryKind {
    /// File bytes this entry accounts for.
    pub fn bytes(&self) -> u64 {
        match self {
            EntryKind::File { content, .. } => content.size,
            EntryKind::Dir { bytes, .. } => *bytes,
            _ => 0,
        }
    }
}

/// A borrowed view of a directory entry, for encoding without copying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryRef<'a> {
    /// A regular file.
    File {
        /// Attributes.
        attrs: &'a Attrs,
        /// Content.
        content: Content,
    },
    /// A directory.
    Dir(TreeRef),
    /// A symbolic link.
    Symlink {
        /// Attributes.
        attrs: &'a Attrs,
        /// Target.
        target: &'a [u8],
    },
    /// A named pipe, device or socket.
    Special {
        /// Attributes.
        attrs: &'a Attrs,
        /// Which.
        special: Special,
    },
}

impl EntryKind {
    /// A borrowed view.
    pub fn as_ref(&self) -> EntryRef<'_> {
        match self {
            EntryKind::File { attrs, content } => EntryRef::File {
                attrs,
                content: *content,
            },
            EntryKind::Dir { node, fp, bytes } => EntryRef::Dir(TreeRef {
                node: *node,
                fp: *fp,
                bytes: *bytes,
            }),
            EntryKind::Symlink { attrs, target } => EntryRef::Symlink { attrs, target },
            EntryKind::Special { attrs, special } => EntryRef::Special {
                attrs,
                special: *special,
            },
        }
    }
}

impl EntryRef<'_> {
    /// File bytes this entry accounts for.
    pub fn bytes(&self) -> u64 {
        match self {
            EntryRef::File { content, .. } => content.size,
            EntryRef::Dir(t) => t.bytes,
            _ => 0,
        }
    }

    /// Equal for the fingerprint: everything but mtimes (directories: by fingerprint).
    pub fn same_content(&self, other: &EntryRef<'_>) -> bool {
        fn attrs_eq(a: &Attrs, b: &Attrs) -> bool {
            a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.xattrs == b.xattrs
        }
        match (self, other) {
            (
                EntryRef::File {
                    attrs: a,
                    content: ca,
                },
                EntryRef::File {
                    attrs: b,
                    content: cb,
                },
            ) => ca == cb && attrs_eq(a, b),
            (EntryRef::Dir(a), EntryRef::Dir(b)) => a.fp == b.fp,
            (
                EntryRef::Symlink {
                    attrs: a,
                    target: ta,
                },
                EntryRef::Symlink {
                    attrs: b,
                    target: tb,
                },
            ) => ta == tb && attrs_eq(a, b),
            (
                EntryRef::Special {
                    attrs: a,
                    special: sa,
                },
                EntryRef::Special {
                    attrs: b,
                    special: sb,
                },
            ) => sa == sb && attrs_eq(a, b),
            _ => false,
        }
    }
}

/// A directory encoded for the store: the root object, and its pages when the
/// directory is large enough to be split.
#[derive(Debug)]
pub struct Encoded {
    /// The root object's bytes (a whole node, or a page index).
    pub root: Vec<u8>,
    /// Storage hash, fingerprint and byte total.
    pub tref: TreeRef,
    /// Pages, in name order: (hash, bytes). Empty for a single node.
    pub pages: Vec<(Hash, Vec<u8>)>,
}

impl Encoded {
    /// Stages the root and its pages.
    pub fn store(&self, w: &mut ObjectWriter<'_>) -> Result<TreeRef> {
        for (h, bytes) in &self.pages {
            w.put_hashed(*h, bytes)?;
        }
        w.put_hashed(self.tref.node, &self.root)?;
        Ok(self.tref)
    }
}

/// An immutable directory node.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DirNode {
    /// The directory's own attributes.
    pub attrs: Attrs,
    /// Entries, strictly sorted by name.
    pub entries: Vec<(Name, EntryKind)>,
}

/// One step of walking two directories' entries (each sorted by name) side by side.
pub(crate) enum Merged<'a> {
    /// Only in the first.
    Left(&'a Name, &'a EntryKind),
    /// Only in the second.
    Right(&'a Name, &'a EntryKind),
    /// In both, under one name.
    Both(&'a Name, &'a EntryKind, &'a EntryKind),
}

/// The entries of `a` and `b` (each sorted by name) in name order, paired where a name
/// is in both: what a diff of two directories walks.
pub(crate) fn merge_entries<'a>(
    a: &'a [(Name, EntryKind)],
    b: &'a [(Name, EntryKind)],
) -> impl Iterator<Item = Merged<'a>> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let step = match (a.get(i), b.get(j)) {
            (Some((na, ka)), Some((nb, kb))) => match na.cmp(nb) {
                std::cmp::Ordering::Less => {
                    i += 1;
                    Merged::Left(na, ka)
                }
                std::cmp::Ordering::Greater => {
                    j += 1;
                    Merged::Right(nb, kb)
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                    Merged::Both(na, ka, kb)
                }
            },
            (Some((na, ka)), None) => {
                i += 1;
                Merged::Left(na, ka)
            }
            (None, Some((nb, kb))) => {
                j += 1;
                Merged::Right(nb, kb)
            }
            (None, None) => return None,
        };
        Some(step)
    })
}

/// A stored directory: both of its hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TreeRef {
    /// Storage hash.
    pub node: Hash,
    /// Fingerprint.
    pub fp: Hash,
    /// Total file bytes below.
    pub bytes: u64,
}

impl TreeRef {
    /// This directory as an entry of its parent.
    pub fn entry(self) -> EntryKind {
        EntryKind::Dir {
            node: self.node,
            fp: self.fp,
            bytes: self.bytes,
        }
    }
}

impl DirNode {
    /// Finds an entry by name.
    pub fn get(&self, name: &Name) -> Option<&EntryKind> {
        self.entries
            .binary_search_by(|(n, _)| n.cmp(name))
            .ok()
            .map(|i| &self.entries[i].1)
    }

    /// Encodes the directory (paged when large) and computes both hashes.
    pub fn encode(&self) -> Encoded {
        let refs: Vec<(&Name, EntryRef<'_>)> =
            self.entries.iter().map(|(n, k)| (n, k.as_ref())).collect();
        encode_dir(&self.attrs, &refs)
    }

    /// Decodes a single-object node (`HDN1`); `hash` names it in errors.
    pub fn decode(hash: &Hash, bytes: &[u8]) -> Result<DirNode> {
        let mut r = Reader {
            buf: bytes,
            pos: 0,
            hash: *hash,
        };
        if r.take(4)? != DIR_MAGIC {
            return Err(r.corrupt("not a directory node"));
        }
        let attrs = r.attrs()?;
        let mut entries = Vec::new();
        decode_entries(&mut r, &mut entries)?;
        if r.pos != bytes.len() {
            return Err(r.corrupt("trailing bytes"));
        }
        Ok(DirNode { attrs, entries })
    }

    /// Stores the directory (and its pages) and returns its reference.
    pub fn store(&self, w: &mut ObjectWriter<'_>) -> Result<TreeRef> {
        self.encode().store(w)
    }

    /// Loads and decodes a directory, its pages included.
    pub fn load(store: &Store, node: &Hash) -> Result<DirNode> {
        let bytes = store.get(node)?;
        if !bytes.starts_with(INDEX_MAGIC) {
            return DirNode::decode(node, &bytes);
        }
        let (attrs, pages) = parse_index(node, &bytes)?;
        let mut entries = Vec::with_capacity(
            pages
                .iter()
                .map(|p| p.count as usize)
                .sum::<usize>()
                .min(1 << 20),
        );
        for p in pages {
            let (h, count) = (p.hash, p.count);
            let page = store.get(&h)?;
            let mut r = Reader {
                buf: &page,
                pos: 0,
                hash: h,
            };
            if r.take(4)? != PAGE_MAGIC {
                return Err(r.corrupt("not a directory page"));
            }
            let before = entries.len();
            decode_entries(&mut r, &mut entries)?;
            if r.pos != page.len() || entries.len() - before != count as usize {
                return Err(r.corrupt("page does not match its index"));
            }
        }
        Ok(DirNode { attrs, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, MemBackend};
    use std::sync::Arc;

    fn attrs(mtime: Nanos) -> Attrs {
        Attrs {
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime,
            xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
        }
    }

    fn sample(mtime: Nanos) -> DirNode {
        DirNode {
            attrs: attrs(mtime),
            entries: vec![
                (
                    Name::new(b"a").expect("name"),
                    EntryKind::File {
                        attrs: attrs(mtime),
                        content: Content {
                            hash: Hash::of(b"x"),
                            chunked: false,
                            size: 1,
                        },
                    },
                ),
                (
                    Name::new(b"b").expect("name"),
                    EntryKind::Symlink {
                        attrs: attrs(mtime),
                        target: b"a".to_vec(),
                    },
                ),
                (
                    Name::new(b"c").expect("name"),
                    EntryKind::Special {
                        attrs: attrs(0),
                        special: Special::Fifo,
                    },
                ),
            ],
        }
    }

    /// The fingerprint and node hash are part of the format: pinned, so that a change of
    /// the encoder that alters either (rather than only its speed) fails here.
    #[test]
    fn fingerprint_and_node_hash_are_pinned() {
        let mut node = sample(5);
        node.entries.push((
            Name::new(b"d").expect("name"),
            EntryKind::Dir {
                node: Hash::of(b"node"),
                fp: Hash::of(b"fp"),
                bytes: 7,
            },
        ));
        node.entries.push((
            Name::new(b"e").expect("name"),
            EntryKind::Special {
                attrs: attrs(9),
                special: Special::Char(0x0501),
            },
        ));
        let e = node.encode();
        assert_eq!(
            (e.tref.fp.to_string(), e.tref.node.to_string()),
            (
                "a4c7380f488d703bb5a6ae169c5cc4c7b8875170c3c57aa2b860f4233c6f10e4".to_string(),
                "9271317d96c977b3b9ab393d85c6cb91a03e5ff3c5edd223c3f2659128cc9345".to_string()
            )
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        let node = sample(5);
        let e = node.encode();
        assert_eq!(
            DirNode::decode(&e.tref.node, &e.root).expect("decode"),
            node
        );
    }

    #[test]
    fn fingerprint_ignores_mtime_but_not_content() {
        let a = sample(1).encode().tref;
        let b = sample(2).encode().tref;
        assert_ne!(a.node, b.node);
        assert_eq!(a.fp, b.fp);
        let mut c = sample(1);
        c.attrs.mode = 0o755;
        assert_ne!(c.encode().tref.fp, a.fp);
    }

    fn big(n: usize, mtime: Nanos) -> DirNode {
        DirNode {
            attrs: attrs(mtime),
            entries: (0..n)
                .map(|i| {
                    (
                        Name::new(format!("file-{i:05}").as_bytes()).expect("name"),
                        EntryKind::File {
                            attrs: attrs(mtime),
                            content: Content {
                                hash: Hash::of(&i.to_le_bytes()),
                                chunked: false,
                                size: i as u64,
                            },
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn count_changes_ignores_mtimes_and_counts_each_kind_of_change() {
        for n in [3usize, 500] {
            let store = Store::open(Arc::new(MemBackend::new()), 64 << 20).expect("open");
            let a = big(n, 1);
            let mut w = store.writer();
            let ta = a.store(&mut w).expect("store");
            w.commit(Batch::new()).expect("commit");
            assert_eq!(
                count_changes(&store, &ta.node, &big(n, 2).encode()).expect("count"),
                0
            );
            let mut b = big(n, 2);
            b.entries.remove(1);
            if let EntryKind::File { content, .. } = &mut b.entries[0].1 {
                content.size = 9;
            }
            b.entries.push((
                Name::new(b"zz").expect("name"),
                EntryKind::Special {
                    attrs: attrs(0),
                    special: Special::Fifo,
                },
            ));
            assert_eq!(
                count_changes(&store, &ta.node, &b.encode()).expect("count"),
                3,
                "{n} entries"
            );
        }
    }

    #[test]
    fn large_directories_are_paged_and_an_edit_rewrites_one_page() {
        let store = Store::open(Arc::new(MemBackend::new()), 64 << 20).expect("open");
        let a = big(2000, 1);
        let enc = a.encode();
        assert!(enc.pages.len() > 20, "{} pages", enc.pages.len());
        assert!(enc.pages.len() < 200);
        let mut w = store.writer();
        let ta = a.store(&mut w).expect("store");
        w.commit(Batch::new()).expect("commit");
        assert_eq!(DirNode::load(&store, &ta.node).expect("load"), a);
        assert_eq!(
            dir_objects(&store, &ta.node).expect("objects").len(),
            enc.pages.len() + 1
        );
        // One changed entry: one new page and a new index.
        let mut b = a.clone();
        if let EntryKind::File { content, .. } = &mut b.entries[1000].1 {
            content.size += 1;
        }
        let mut w = store.writer();
        b.store(&mut w).expect("store");
        let (objects, _) = w.commit(Batch::new()).expect("commit");
        assert_eq!(objects, 2);
        // Equal content, other mtimes: same fingerprint, whatever the paging.
        assert_eq!(big(2000, 7).encode().tref.fp, ta.fp);
    }

    #[test]
    fn decode_rejects_garbage() {
        let h = Hash::of(b"");
        assert!(DirNode::decode(&h, b"nope").is_err());
        let mut bytes = sample(1).encode().root;
        bytes.truncate(bytes.len() - 3);
        assert!(matches!(
            DirNode::decode(&h, &bytes),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn large_files_are_chunked_and_edits_share_chunks() {
        let store = Store::open(Arc::new(MemBackend::new()), 64 << 20).expect("open");
        let mut data: Vec<u8> = (0..1_500_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        let mut w = store.writer();
        let c1 = store_file(&mut w, &data[..]).expect("store");
        w.commit(Batch::new()).expect("commit");
        assert!(c1.chunked);
        assert_eq!(c1.size, data.len() as u64);
        data[700_000] ^= 0xff;
        let mut w = store.writer();
        let c2 = store_file(&mut w, &data[..]).expect("store");
        let (objects, _) = w.commit(Batch::new()).expect("commit");
        assert!(objects <= 3, "an edit stored {objects} objects");
        let mut out = Vec::new();
        write_content(&store, &c2, &mut out).expect("read back");
        assert_eq!(out, data);
    }
}
