//! The Merkle tree: directory nodes and file contents as store objects.
//!
//! A directory node has two hashes. Its *storage hash* names the stored bytes, which
//! include mtimes and children's storage hashes. Its *fingerprint* covers only content
//! (names, kinds, modes, owners, sizes, file contents, symlink targets, xattrs and the
//! children's fingerprints), so equal files give an equal fingerprint whatever the time
//! and the order of operations that produced them. Layouts: `docs/format.md`.

use std::io::Read;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::name::Name;
use crate::store::{ObjectWriter, Store};

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

/// FNV-1a 64 of a name: a fixed, documented function, because page boundaries are part
/// of the format (they enter the fingerprint).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Where a directory's entries split into pages: after an entry whose name hashes to
/// `PAGE_AVG - 1` modulo `PAGE_AVG`, or after `PAGE_MAX` entries without such a name.
/// Boundaries depend on names only, so an edit changes one page, not its neighbours.
fn page_ranges(entries: &[(&Name, EntryRef<'_>)]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, (name, _)) in entries.iter().enumerate() {
        let len = i + 1 - start;
        if fnv1a(name.as_bytes()) % PAGE_AVG == PAGE_AVG - 1 || len == PAGE_MAX {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < entries.len() {
        out.push(start..entries.len());
    }
    out
}

/// Appends the storage and fingerprint encodings of entries; returns their file bytes.
fn encode_entries(
    out: &mut Vec<u8>,
    fp: &mut blake3::Hasher,
    entries: &[(&Name, EntryRef<'_>)],
) -> u64 {
    let mut scratch = Vec::with_capacity(128);
    let mut bytes = 0u64;
    for (name, kind) in entries {
        bytes = bytes.saturating_add(kind.bytes());
        scratch.clear();
        scratch.push(name.as_bytes().len() as u8);
        scratch.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&scratch);
        fp.update(&scratch);
        scratch.clear();
        match kind {
            EntryRef::File { attrs, content } => {
                out.push(KIND_FILE);
                scratch.push(KIND_FILE);
                put_attrs(out, attrs, true);
                put_attrs(&mut scratch, attrs, false);
                for buf in [&mut *out, &mut scratch] {
                    buf.extend_from_slice(&content.size.to_be_bytes());
                    buf.extend_from_slice(content.hash.as_bytes());
                    buf.push(content.chunked as u8);
                }
            }
            EntryRef::Dir(t) => {
                out.push(KIND_DIR);
                out.extend_from_slice(t.node.as_bytes());
                out.extend_from_slice(t.fp.as_bytes());
                out.extend_from_slice(&t.bytes.to_be_bytes());
                scratch.push(KIND_DIR);
                scratch.extend_from_slice(t.fp.as_bytes());
            }
            EntryRef::Symlink { attrs, target } => {
                out.push(KIND_SYMLINK);
                scratch.push(KIND_SYMLINK);
                put_attrs(out, attrs, true);
                put_attrs(&mut scratch, attrs, false);
                for buf in [&mut *out, &mut scratch] {
                    buf.extend_from_slice(&(target.len() as u16).to_be_bytes());
                    buf.extend_from_slice(target);
                }
            }
            EntryRef::Special { attrs, special } => {
                out.push(special.code());
                scratch.push(special.code());
                put_attrs(out, attrs, true);
                put_attrs(&mut scratch, attrs, false);
                special.put_rdev(out);
                special.put_rdev(&mut scratch);
            }
        }
        fp.update(&scratch);
    }
    bytes
}

/// Encodes a directory from borrowed entries (strictly sorted by name): one node when it
/// fits one page, otherwise pages and an index (`docs/format.md`).
pub fn encode_dir(attrs: &Attrs, entries: &[(&Name, EntryRef<'_>)]) -> Encoded {
    let ranges = page_ranges(entries);
    let mut attrs_fp = Vec::with_capacity(32);
    put_attrs(&mut attrs_fp, attrs, false);
    if ranges.len() <= 1 {
        let mut out = Vec::with_capacity(64 + entries.len() * 96);
        let mut fp = blake3::Hasher::new();
        out.extend_from_slice(DIR_MAGIC);
        fp.update(FP_MAGIC);
        put_attrs(&mut out, attrs, true);
        fp.update(&attrs_fp);
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        let bytes = encode_entries(&mut out, &mut fp, entries);
        let tref = TreeRef {
            node: Hash::of(&out),
            fp: Hash(*fp.finalize().as_bytes()),
            bytes,
        };
        return Encoded {
            root: out,
            tref,
            pages: Vec::new(),
        };
    }
    let mut root = Vec::with_capacity(64 + ranges.len() * 80);
    let mut root_fp = blake3::Hasher::new();
    root.extend_from_slice(INDEX_MAGIC);
    root_fp.update(INDEX_FP_MAGIC);
    put_attrs(&mut root, attrs, true);
    root_fp.update(&attrs_fp);
    root.extend_from_slice(&(ranges.len() as u32).to_be_bytes());
    let mut pages = Vec::with_capacity(ranges.len());
    let mut total = 0u64;
    for r in ranges {
        let part = &entries[r];
        let mut out = Vec::with_capacity(8 + part.len() * 96);
        let mut fp = blake3::Hasher::new();
        out.extend_from_slice(PAGE_MAGIC);
        fp.update(PAGE_FP_MAGIC);
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        let bytes = encode_entries(&mut out, &mut fp, part);
        let hash = Hash::of(&out);
        let page_fp = Hash(*fp.finalize().as_bytes());
        total = total.saturating_add(bytes);
        root.extend_from_slice(hash.as_bytes());
        root.extend_from_slice(page_fp.as_bytes());
        root.extend_from_slice(&bytes.to_be_bytes());
        root.extend_from_slice(&(part.len() as u32).to_be_bytes());
        root_fp.update(page_fp.as_bytes());
        pages.push((hash, out));
    }
    let tref = TreeRef {
        node: Hash::of(&root),
        fp: Hash(*root_fp.finalize().as_bytes()),
        bytes: total,
    };
    Encoded { root, tref, pages }
}

/// Attributes and entries (strictly sorted by name) in the entry encoding of a directory
/// node, never paged and without a magic: the form workspace journal records take
/// (`docs/format.md`). Appends to `out`.
pub(crate) fn encode_plain(out: &mut Vec<u8>, attrs: &Attrs, entries: &[(&Name, EntryRef<'_>)]) {
    put_attrs(out, attrs, true);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    // The fingerprint is not needed here; the hasher's input is thrown away.
    encode_entries(out, &mut blake3::Hasher::new(), entries);
}

/// What `decode_plain` returns: attributes, entries, bytes consumed.
pub(crate) type Plain = (Attrs, Vec<(Name, EntryKind)>, usize);

/// Decodes what `encode_plain` wrote at the start of `bytes`; returns the attributes,
/// the entries and the bytes consumed. `what` names the record in errors.
pub(crate) fn decode_plain(what: &str, bytes: &[u8]) -> Result<Plain> {
    let mut r = Reader {
        buf: bytes,
        pos: 0,
        hash: Hash::of(bytes),
    };
    let parsed = (|| {
        let attrs = r.attrs()?;
        let mut entries = Vec::new();
        decode_entries(&mut r, &mut entries)?;
        Ok((attrs, entries))
    })();
    match parsed {
        Ok((attrs, entries)) => Ok((attrs, entries, r.pos)),
        Err(Error::Corrupt { reason, .. }) => Err(Error::CorruptRecord {
            key: what.to_string(),
            reason,
        }),
        Err(e) => Err(e),
    }
}

/// The objects a directory is stored as: its root and, when paged, its pages.
pub fn dir_objects(store: &Store, node: &Hash) -> Result<Vec<Hash>> {
    let bytes = store.get(node)?;
    let mut out = vec![*node];
    if bytes.starts_with(INDEX_MAGIC) {
        out.extend(parse_index(node, &bytes)?.1.iter().map(|p| p.0));
    }
    Ok(out)
}

/// Parses a page index: attrs and (hash, count) of each page.
fn parse_index(hash: &Hash, bytes: &[u8]) -> Result<(Attrs, Vec<(Hash, u32)>)> {
    let mut r = Reader {
        buf: bytes,
        pos: 0,
        hash: *hash,
    };
    if r.take(4)? != INDEX_MAGIC {
        return Err(r.corrupt("not a page index"));
    }
    let attrs = r.attrs()?;
    let n = r.u32()? as usize;
    let mut pages = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let h = r.hash()?;
        r.take(32 + 8)?;
        let count = r.u32()?;
        pages.push((h, count));
    }
    if r.pos != bytes.len() {
        return Err(r.corrupt("trailing bytes"));
    }
    Ok((attrs, pages))
}

/// An immutable directory node.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DirNode {
    /// The directory's own attributes.
    pub attrs: Attrs,
    /// Entries, strictly sorted by name.
    pub entries: Vec<(Name, EntryKind)>,
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
                .map(|p| p.1 as usize)
                .sum::<usize>()
                .min(1 << 20),
        );
        for (h, count) in pages {
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

/// Decodes `count` entries (count first), appending to `entries` in strict name order.
fn decode_entries(r: &mut Reader<'_>, entries: &mut Vec<(Name, EntryKind)>) -> Result<()> {
    {
        let count = r.u32()? as usize;
        entries.reserve(count.min(1 << 16));
        for _ in 0..count {
            let len = r.u8()? as usize;
            let name = Name::new(r.take(len)?).map_err(|e| r.corrupt(&e.to_string()))?;
            if let Some((prev, _)) = entries.last()
                && *prev >= name
            {
                return Err(r.corrupt("entries out of order"));
            }
            let kind = match r.u8()? {
                KIND_FILE => {
                    let attrs = r.attrs()?;
                    let size = r.u64()?;
                    let hash = r.hash()?;
                    let chunked = r.u8()? != 0;
                    EntryKind::File {
                        attrs,
                        content: Content {
                            hash,
                            chunked,
                            size,
                        },
                    }
                }
                KIND_DIR => EntryKind::Dir {
                    node: r.hash()?,
                    fp: r.hash()?,
                    bytes: r.u64()?,
                },
                KIND_SYMLINK => {
                    let attrs = r.attrs()?;
                    let len = r.u16()? as usize;
                    EntryKind::Symlink {
                        attrs,
                        target: r.take(len)?.to_vec(),
                    }
                }
                code @ (KIND_FIFO | KIND_CHAR | KIND_BLOCK | KIND_SOCKET) => {
                    let attrs = r.attrs()?;
                    let special = match code {
                        KIND_FIFO => Special::Fifo,
                        KIND_CHAR => Special::Char(r.u64()?),
                        KIND_BLOCK => Special::Block(r.u64()?),
                        _ => Special::Socket,
                    };
                    EntryKind::Special { attrs, special }
                }
                other => return Err(r.corrupt(&format!("unknown entry kind {other}"))),
            };
            entries.push((name, kind));
        }
    }
    Ok(())
}

fn put_attrs(out: &mut Vec<u8>, a: &Attrs, with_time: bool) {
    out.extend_from_slice(&a.mode.to_be_bytes());
    out.extend_from_slice(&a.uid.to_be_bytes());
    out.extend_from_slice(&a.gid.to_be_bytes());
    if with_time {
        out.extend_from_slice(&a.mtime.to_be_bytes());
    }
    out.extend_from_slice(&(a.xattrs.len() as u16).to_be_bytes());
    for (k, v) in &a.xattrs {
        out.push(k.len() as u8);
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    hash: Hash,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, why: &str) -> Error {
        Error::Corrupt {
            hash: self.hash,
            reason: format!("{why} at byte {}", self.pos),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.corrupt("truncated")),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_be_bytes(a))
    }
    fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn hash(&mut self) -> Result<Hash> {
        Hash::from_slice(self.take(32)?)
    }
    fn skip_attrs(&mut self) -> Result<()> {
        self.take(12 + 8)?;
        self.skip_xattrs()
    }
    fn skip_xattrs(&mut self) -> Result<()> {
        let n = self.u16()? as usize;
        for _ in 0..n {
            let kl = self.u8()? as usize;
            self.take(kl)?;
            let vl = self.u32()? as usize;
            self.take(vl)?;
        }
        Ok(())
    }
    fn attrs(&mut self) -> Result<Attrs> {
        let mode = self.u32()?;
        let uid = self.u32()?;
        let gid = self.u32()?;
        let mtime = self.u64()? as i64;
        let n = self.u16()? as usize;
        let mut xattrs = Vec::with_capacity(n);
        for _ in 0..n {
            let kl = self.u8()? as usize;
            let k = self.take(kl)?.to_vec();
            let vl = self.u32()? as usize;
            let v = self.take(vl)?.to_vec();
            xattrs.push((k, v));
        }
        Ok(Attrs {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }
}

/// One entry of an encoded directory node, borrowed from its bytes, with the parts that
/// enter the fingerprint split around the mtime.
struct RawEntry<'a> {
    name: &'a [u8],
    kind: u8,
    /// Content bytes before the mtime (mode, uid, gid) or, for directories, the fp.
    head: &'a [u8],
    /// Content bytes after the mtime (xattrs, size, hash, target).
    tail: &'a [u8],
}

/// Iterates the entries of an encoded directory node without allocating.
fn raw_entries<'a>(hash: &Hash, bytes: &'a [u8]) -> Result<Vec<RawEntry<'a>>> {
    let mut r = Reader {
        buf: bytes,
        pos: 0,
        hash: *hash,
    };
    match r.take(4)? {
        m if m == DIR_MAGIC => r.skip_attrs()?,
        m if m == PAGE_MAGIC => {}
        _ => return Err(r.corrupt("not a directory node or page")),
    }
    let count = r.u32()? as usize;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let len = r.u8()? as usize;
        let name = r.take(len)?;
        let kind = r.u8()?;
        let (head, tail) = match kind {
            KIND_DIR => {
                r.take(32)?;
                let fp = r.take(32)?;
                r.take(8)?;
                (fp, &[][..])
            }
            KIND_FILE | KIND_SYMLINK | KIND_FIFO | KIND_CHAR | KIND_BLOCK | KIND_SOCKET => {
                let head = r.take(12)?;
                r.take(8)?;
                let start = r.pos;
                r.skip_xattrs()?;
                match kind {
                    KIND_FILE => {
                        r.take(8 + 32 + 1)?;
                    }
                    KIND_SYMLINK => {
                        let n = r.u16()? as usize;
                        r.take(n)?;
                    }
                    KIND_CHAR | KIND_BLOCK => {
                        r.take(8)?;
                    }
                    _ => {}
                }
                (head, &bytes[start..r.pos])
            }
            other => return Err(r.corrupt(&format!("unknown entry kind {other}"))),
        };
        out.push(RawEntry {
            name,
            kind,
            head,
            tail,
        });
    }
    Ok(out)
}

/// Paths added, removed or changed (mtimes aside) between the stored directory `old` and
/// its new encoding; subdirectories present in both count only their own changes (not
/// counted here). Pages equal on both sides are skipped unread.
pub fn count_changes(store: &Store, old: &Hash, new: &Encoded) -> Result<u64> {
    let old_root = store.get(old)?;
    let mut old_parts: Vec<(Hash, std::sync::Arc<[u8]>)> = Vec::new();
    if old_root.starts_with(INDEX_MAGIC) {
        for (h, _) in parse_index(old, &old_root)?.1 {
            old_parts.push((h, store.get(&h)?));
        }
    } else {
        old_parts.push((*old, old_root.clone()));
    }
    let new_parts: Vec<(Hash, &[u8])> = if new.pages.is_empty() {
        vec![(new.tref.node, &new.root)]
    } else {
        new.pages.iter().map(|(h, b)| (*h, b.as_slice())).collect()
    };
    let old_set: std::collections::HashSet<Hash> = old_parts.iter().map(|p| p.0).collect();
    let new_set: std::collections::HashSet<Hash> = new_parts.iter().map(|p| p.0).collect();
    let mut a = Vec::new();
    for (h, bytes) in old_parts.iter().filter(|p| !new_set.contains(&p.0)) {
        a.extend(raw_entries(h, bytes)?);
    }
    let mut b = Vec::new();
    for (h, bytes) in new_parts.iter().filter(|p| !old_set.contains(&p.0)) {
        b.extend(raw_entries(h, bytes)?);
    }
    let (mut i, mut j, mut n) = (0, 0, 0u64);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.name == y.name => {
                let same = x.kind == y.kind
                    && (x.kind == KIND_DIR || (x.head == y.head && x.tail == y.tail));
                n += u64::from(!same);
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.name < y.name => {
                n += 1;
                i += 1;
            }
            (Some(_), None) => {
                n += 1;
                i += 1;
            }
            _ => {
                n += 1;
                j += 1;
            }
        }
    }
    Ok(n)
}

/// Stores a file's bytes from `reader`: one chunk when small, FastCDC chunks and a chunk
/// list when large. Memory stays bounded by the chunk size for any file length.
pub fn store_file(w: &mut ObjectWriter<'_>, reader: impl Read) -> Result<Content> {
    content_of(reader, |bytes| w.put(bytes))
}

/// The content a reader's bytes would be stored as, storing nothing: what verifies a
/// real file against a content hash.
pub fn hash_file(reader: impl Read) -> Result<Content> {
    content_of(reader, |bytes| Ok(Hash::of(bytes)))
}

/// Cuts `reader` into the objects of a content (one chunk, or chunks and a chunk list),
/// handing each to `put`, which names it.
fn content_of(reader: impl Read, mut put: impl FnMut(&[u8]) -> Result<Hash>) -> Result<Content> {
    let mut head = Vec::with_capacity(16 << 10);
    let mut limited = reader.take(CHUNK_THRESHOLD as u64 + 1);
    limited
        .read_to_end(&mut head)
        .map_err(|e| Error::io("read file data", e))?;
    let reader = limited.into_inner();
    if head.len() <= CHUNK_THRESHOLD {
        let hash = put(&head)?;
        return Ok(Content {
            hash,
            chunked: false,
            size: head.len() as u64,
        });
    }
    let source = std::io::Cursor::new(head).chain(reader);
    let cdc = fastcdc::v2020::StreamCDC::new(source, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX);
    let mut list = Vec::with_capacity(1024);
    list.extend_from_slice(LIST_MAGIC);
    let mut size = 0u64;
    for chunk in cdc {
        let chunk = chunk.map_err(|e| Error::io("read file data", std::io::Error::other(e)))?;
        let hash = put(&chunk.data)?;
        list.extend_from_slice(hash.as_bytes());
        list.extend_from_slice(&(chunk.length as u32).to_be_bytes());
        size += chunk.length as u64;
    }
    let hash = put(&list)?;
    Ok(Content {
        hash,
        chunked: true,
        size,
    })
}

/// The chunks of a content, in order: (hash, length).
pub fn chunks_of(store: &Store, content: &Content) -> Result<Vec<(Hash, u32)>> {
    if !content.chunked {
        return Ok(vec![(content.hash, content.size as u32)]);
    }
    let bytes = store.get(&content.hash)?;
    parse_chunk_list(&content.hash, &bytes)
}

/// Parses a chunk list object.
pub fn parse_chunk_list(hash: &Hash, bytes: &[u8]) -> Result<Vec<(Hash, u32)>> {
    let corrupt = |why: &str| Error::Corrupt {
        hash: *hash,
        reason: why.into(),
    };
    let body = bytes
        .strip_prefix(LIST_MAGIC.as_slice())
        .ok_or_else(|| corrupt("not a chunk list"))?;
    if body.len() % 36 != 0 {
        return Err(corrupt("chunk list length"));
    }
    body.chunks_exact(36)
        .map(|c| {
            let h = Hash::from_slice(&c[..32])?;
            let mut l = [0u8; 4];
            l.copy_from_slice(&c[32..]);
            Ok((h, u32::from_be_bytes(l)))
        })
        .collect()
}

/// Writes a content's bytes to `out`, chunk by chunk, verifying each.
pub fn write_content(
    store: &Store,
    content: &Content,
    out: &mut impl std::io::Write,
) -> Result<()> {
    let mut written = 0u64;
    for (hash, len) in chunks_of(store, content)? {
        let data = store.get_uncached(&hash)?;
        if data.len() != len as usize {
            return Err(Error::Corrupt {
                hash: content.hash,
                reason: format!(
                    "chunk {} has {} bytes, list says {len}",
                    hash.short(),
                    data.len()
                ),
            });
        }
        out.write_all(&data)
            .map_err(|e| Error::io("write file data", e))?;
        written += data.len() as u64;
    }
    if written != content.size {
        return Err(Error::Corrupt {
            hash: content.hash,
            reason: format!("content has {written} bytes, entry says {}", content.size),
        });
    }
    Ok(())
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
