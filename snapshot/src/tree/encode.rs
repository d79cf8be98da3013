//! Encoding directories: entries, pages at name-defined boundaries, page indexes, and
//! the fingerprint computed alongside (`docs/format.md`).

use super::*;

/// FNV-1a 64 of a name: a fixed, documented function, because page boundaries are part
/// of the format (they enter the fingerprint).
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
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
pub(super) fn page_ranges(entries: &[(&Name, EntryRef<'_>)]) -> Vec<std::ops::Range<usize>> {
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

/// Appends the storage encoding of entries to `out` and their fingerprint preimage to
/// `fp` (hashed once, whole, by the caller: one pass over a buffer is several times
/// faster than many small updates); returns their file bytes.
pub(super) fn encode_entries(
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    entries: &[(&Name, EntryRef<'_>)],
) -> u64 {
    let mut bytes = 0u64;
    for (name, kind) in entries {
        bytes = bytes.saturating_add(kind.bytes());
        let n = name.as_bytes();
        out.reserve(n.len() + 96);
        scratch.reserve(n.len() + 64);
        out.push(n.len() as u8);
        out.extend_from_slice(n);
        scratch.push(n.len() as u8);
        scratch.extend_from_slice(n);
        match kind {
            EntryRef::File { attrs, content } => {
                out.push(KIND_FILE);
                scratch.push(KIND_FILE);
                put_attrs(out, attrs, true);
                put_attrs(scratch, attrs, false);
                for buf in [&mut *out, &mut *scratch] {
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
                put_attrs(scratch, attrs, false);
                for buf in [&mut *out, &mut *scratch] {
                    buf.extend_from_slice(&(target.len() as u16).to_be_bytes());
                    buf.extend_from_slice(target);
                }
            }
            EntryRef::Special { attrs, special } => {
                out.push(special.code());
                scratch.push(special.code());
                put_attrs(out, attrs, true);
                put_attrs(scratch, attrs, false);
                special.put_rdev(out);
                special.put_rdev(scratch);
            }
        }
    }
    bytes
}

/// Encodes a directory from borrowed entries (strictly sorted by name): one node when it
/// fits one page, otherwise pages and an index (`docs/format.md`).
pub fn encode_dir(attrs: &Attrs, entries: &[(&Name, EntryRef<'_>)]) -> Encoded {
    let ranges = page_ranges(entries);
    if ranges.len() <= 1 {
        let mut attrs_fp = Vec::with_capacity(32);
        put_attrs(&mut attrs_fp, attrs, false);
        let mut out = Vec::with_capacity(64 + entries.len() * 96);
        let mut fp = Vec::with_capacity(64 + entries.len() * 72);
        out.extend_from_slice(DIR_MAGIC);
        fp.extend_from_slice(FP_MAGIC);
        put_attrs(&mut out, attrs, true);
        fp.extend_from_slice(&attrs_fp);
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        let bytes = encode_entries(&mut out, &mut fp, entries);
        let tref = TreeRef {
            node: Hash::of(&out),
            fp: Hash::of(&fp),
            bytes,
        };
        return Encoded {
            root: out,
            tref,
            pages: Vec::new(),
        };
    }
    let mut refs = Vec::with_capacity(ranges.len());
    let mut pages = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (page, bytes) = encode_page(&entries[r]);
        refs.push(page);
        pages.push((page.hash, bytes));
    }
    let (root, tref) = encode_index(attrs, &refs);
    Encoded { root, tref, pages }
}

/// One page of a large directory (entries strictly sorted by name, between two page
/// boundaries): its reference in the index, and its bytes.
pub fn encode_page(part: &[(&Name, EntryRef<'_>)]) -> (PageRef, Vec<u8>) {
    let mut out = Vec::with_capacity(8 + part.len() * 96);
    let mut fp = Vec::with_capacity(8 + part.len() * 72);
    out.extend_from_slice(PAGE_MAGIC);
    fp.extend_from_slice(PAGE_FP_MAGIC);
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    let bytes = encode_entries(&mut out, &mut fp, part);
    let page = PageRef {
        hash: Hash::of(&out),
        fp: Hash::of(&fp),
        bytes,
        count: part.len() as u32,
    };
    (page, out)
}

/// The page index of a large directory over its pages, and the directory's references.
pub fn encode_index(attrs: &Attrs, pages: &[PageRef]) -> (Vec<u8>, TreeRef) {
    let mut root = Vec::with_capacity(64 + pages.len() * 80);
    let mut root_fp = blake3::Hasher::new();
    root.extend_from_slice(INDEX_MAGIC);
    root_fp.update(INDEX_FP_MAGIC);
    put_attrs(&mut root, attrs, true);
    let mut attrs_fp = Vec::with_capacity(32);
    put_attrs(&mut attrs_fp, attrs, false);
    root_fp.update(&attrs_fp);
    root.extend_from_slice(&(pages.len() as u32).to_be_bytes());
    let mut total = 0u64;
    for p in pages {
        total = total.saturating_add(p.bytes);
        root.extend_from_slice(p.hash.as_bytes());
        root.extend_from_slice(p.fp.as_bytes());
        root.extend_from_slice(&p.bytes.to_be_bytes());
        root.extend_from_slice(&p.count.to_be_bytes());
        root_fp.update(p.fp.as_bytes());
    }
    let tref = TreeRef {
        node: Hash::of(&root),
        fp: Hash(*root_fp.finalize().as_bytes()),
        bytes: total,
    };
    (root, tref)
}

/// Attributes and entries (strictly sorted by name) in the entry encoding of a directory
/// node, never paged and without a magic: the form workspace journal records take
/// (`docs/format.md`). Appends to `out`.
pub(crate) fn encode_plain(out: &mut Vec<u8>, attrs: &Attrs, entries: &[(&Name, EntryRef<'_>)]) {
    put_attrs(out, attrs, true);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    // The fingerprint is not needed here; its preimage is thrown away.
    encode_entries(out, &mut Vec::new(), entries);
}

pub(super) fn put_attrs(out: &mut Vec<u8>, a: &Attrs, with_time: bool) {
    // The fixed part in one copy.
    let mut fixed = [0u8; 22];
    fixed[0..4].copy_from_slice(&a.mode.to_be_bytes());
    fixed[4..8].copy_from_slice(&a.uid.to_be_bytes());
    fixed[8..12].copy_from_slice(&a.gid.to_be_bytes());
    let n = if with_time {
        fixed[12..20].copy_from_slice(&a.mtime.to_be_bytes());
        20
    } else {
        12
    };
    fixed[n..n + 2].copy_from_slice(&(a.xattrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&fixed[..n + 2]);
    for (k, v) in &a.xattrs {
        out.push(k.len() as u8);
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
}
