//! Decoding directories: whole nodes, pages and indexes, the journal's plain entry
//! lists, and a borrowing view of raw entries that counts changes between two nodes
//! without allocating.

use super::*;

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
        out.extend(parse_index(node, &bytes)?.1.iter().map(|p| p.hash));
    }
    Ok(out)
}

/// One page as a page index names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRef {
    /// Storage hash.
    pub hash: Hash,
    /// Fingerprint.
    pub fp: Hash,
    /// File bytes of its entries.
    pub bytes: u64,
    /// Entries.
    pub count: u32,
}

/// Parses a page index: attrs and the reference of each page.
pub(super) fn parse_index(hash: &Hash, bytes: &[u8]) -> Result<(Attrs, Vec<PageRef>)> {
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
        pages.push(PageRef {
            hash: r.hash()?,
            fp: r.hash()?,
            bytes: r.u64()?,
            count: r.u32()?,
        });
    }
    if r.pos != bytes.len() {
        return Err(r.corrupt("trailing bytes"));
    }
    Ok((attrs, pages))
}

/// The pages of the stored directory `node`, when it is paged (`None` for one node).
pub fn base_pages(store: &Store, node: &Hash) -> Result<Option<Vec<PageRef>>> {
    let bytes = store.get(node)?;
    if !bytes.starts_with(INDEX_MAGIC) {
        return Ok(None);
    }
    Ok(Some(parse_index(node, &bytes)?.1))
}

/// Decodes `count` entries (count first), appending to `entries` in strict name order.
pub(super) fn decode_entries(
    r: &mut Reader<'_>,
    entries: &mut Vec<(Name, EntryKind)>,
) -> Result<()> {
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

pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) hash: Hash,
}

impl<'a> Reader<'a> {
    pub(super) fn corrupt(&self, why: &str) -> Error {
        Error::Corrupt {
            hash: self.hash,
            reason: format!("{why} at byte {}", self.pos),
        }
    }
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
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
    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_be_bytes(a))
    }
    pub(super) fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    pub(super) fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    pub(super) fn hash(&mut self) -> Result<Hash> {
        Hash::from_slice(self.take(32)?)
    }
    pub(super) fn skip_attrs(&mut self) -> Result<()> {
        self.take(12 + 8)?;
        self.skip_xattrs()
    }
    pub(super) fn skip_xattrs(&mut self) -> Result<()> {
        let n = self.u16()? as usize;
        for _ in 0..n {
            let kl = self.u8()? as usize;
            self.take(kl)?;
            let vl = self.u32()? as usize;
            self.take(vl)?;
        }
        Ok(())
    }
    pub(super) fn attrs(&mut self) -> Result<Attrs> {
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
pub(super) struct RawEntry<'a> {
    name: &'a [u8],
    kind: u8,
    /// Content bytes before the mtime (mode, uid, gid) or, for directories, the fp.
    head: &'a [u8],
    /// Content bytes after the mtime (xattrs, size, hash, target).
    tail: &'a [u8],
}

/// Iterates the entries of an encoded directory node without allocating.
pub(super) fn raw_entries<'a>(hash: &Hash, bytes: &'a [u8]) -> Result<Vec<RawEntry<'a>>> {
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
    let old_hashes: Vec<Hash> = if old_root.starts_with(INDEX_MAGIC) {
        parse_index(old, &old_root)?
            .1
            .iter()
            .map(|p| p.hash)
            .collect()
    } else {
        vec![*old]
    };
    let new_parts: Vec<(Hash, &[u8])> = if new.pages.is_empty() {
        vec![(new.tref.node, &new.root)]
    } else {
        new.pages.iter().map(|(h, b)| (*h, b.as_slice())).collect()
    };
    let old_set: std::collections::HashSet<Hash> = old_hashes.iter().copied().collect();
    let new_set: std::collections::HashSet<Hash> = new_parts.iter().map(|p| p.0).collect();
    let mut old_parts = Vec::new();
    for h in old_hashes.iter().filter(|h| !new_set.contains(h)) {
        old_parts.push((
            *h,
            if *h == *old {
                old_root.clone()
            } else {
                store.get(h)?
            },
        ));
    }
    let mut a = Vec::new();
    for (h, bytes) in &old_parts {
        a.extend(raw_entries(h, bytes)?);
    }
    let mut b = Vec::new();
    for (h, bytes) in new_parts.iter().filter(|p| !old_set.contains(&p.0)) {
        b.extend(raw_entries(h, bytes)?);
    }
    Ok(count_between(&a, &b))
}

/// Paths changed between the stored page `old` and a new page (`hash`, `bytes`) that
/// replaces it, as `count_changes` counts them.
pub fn count_page_changes(store: &Store, old: &Hash, hash: &Hash, bytes: &[u8]) -> Result<u64> {
    if old == hash {
        return Ok(0);
    }
    let old_bytes = store.get(old)?;
    Ok(count_between(
        &raw_entries(old, &old_bytes)?,
        &raw_entries(hash, bytes)?,
    ))
}

/// Entries added, removed or changed between two name-ordered raw entry lists.
fn count_between(a: &[RawEntry<'_>], b: &[RawEntry<'_>]) -> u64 {
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
    n
}
