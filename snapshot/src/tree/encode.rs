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

/// Appends the storage and fingerprint encodings of entries; returns their file bytes.
pub(super) fn encode_entries(
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

/// One page of a large directory: its references and its bytes.
fn encode_page(part: &[(&Name, EntryRef<'_>)]) -> (PageRef, Vec<u8>) {
    let mut out = Vec::with_capacity(8 + part.len() * 96);
    let mut fp = blake3::Hasher::new();
    out.extend_from_slice(PAGE_MAGIC);
    fp.update(PAGE_FP_MAGIC);
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    let bytes = encode_entries(&mut out, &mut fp, part);
    let page = PageRef {
        hash: Hash::of(&out),
        fp: Hash(*fp.finalize().as_bytes()),
        bytes,
        count: part.len() as u32,
    };
    (page, out)
}

/// The page index of a large directory over its pages.
fn encode_index(attrs: &Attrs, pages: &[PageRef]) -> (Vec<u8>, TreeRef) {
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

/// Encodes a directory whose stored form was `base` (decoded: `old`), as `encode_dir`
/// does, but takes each page whose entries did not change from `base` instead of
/// encoding and hashing it again; `pages` then holds only the new pages. Also returns
/// the paths changed against `base`, as `count_changes` counts them, from the entries
/// of the pages that differ. Page boundaries depend on names only, so an edit leaves
/// every other page of a large directory as it was: a commit of a few changed entries
/// costs the pages they are in, not the directory.
pub fn encode_dir_over(
    store: &Store,
    base: &Hash,
    old: &DirNode,
    attrs: &Attrs,
    entries: &[(&Name, EntryRef<'_>)],
) -> Result<(Encoded, u64)> {
    let old_root = store.get(base)?;
    let ranges = page_ranges(entries);
    let old_pages = if ranges.len() > 1 && old_root.starts_with(INDEX_MAGIC) {
        let pages = parse_index_full(base, &old_root)?.1;
        let total: usize = pages.iter().map(|p| p.count as usize).sum();
        (total == old.entries.len()).then_some(pages)
    } else {
        None
    };
    let Some(old_pages) = old_pages else {
        let enc = encode_dir(attrs, entries);
        let changed = count_changes(store, base, &enc)?;
        return Ok((enc, changed));
    };
    let mut refs = Vec::with_capacity(ranges.len());
    let mut pages = Vec::new();
    // Entries of the pages that differ, old and new, for counting changes.
    let mut gone: Vec<&(Name, EntryKind)> = Vec::new();
    let mut came: Vec<&(&Name, EntryRef<'_>)> = Vec::new();
    let (mut k, mut at) = (0usize, 0usize);
    for r in ranges {
        let part = &entries[r];
        let first = part[0].0;
        // Old pages that end before this one starts changed (or went).
        while k < old_pages.len() && at < old.entries.len() && old.entries[at].0 < *first {
            let n = old_pages[k].count as usize;
            gone.extend(&old.entries[at..at + n]);
            at += n;
            k += 1;
        }
        let same = k < old_pages.len() && old_pages[k].count as usize == part.len() && {
            let olds = &old.entries[at..at + part.len()];
            olds.iter()
                .zip(part)
                .all(|((n, kind), (m, r))| n == *m && kind.as_ref() == *r)
        };
        if same {
            refs.push(old_pages[k]);
            at += part.len();
            k += 1;
        } else {
            let (page, bytes) = encode_page(part);
            refs.push(page);
            pages.push((page.hash, bytes));
            came.extend(part);
        }
    }
    gone.extend(&old.entries[at..]);
    let (root, tref) = encode_index(attrs, &refs);
    let changed = count_between(&gone, &came);
    Ok((Encoded { root, tref, pages }, changed))
}

/// Paths added, removed or changed (mtimes aside) between two name-ordered entry lists;
/// a directory in both counts only its own changes (elsewhere).
fn count_between(a: &[&(Name, EntryKind)], b: &[&(&Name, EntryRef<'_>)]) -> u64 {
    let (mut i, mut j, mut n) = (0, 0, 0u64);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some((x, kx)), Some((y, ky))) if x == *y => {
                let same = match (kx, ky) {
                    (EntryKind::Dir { .. }, EntryRef::Dir(_)) => true,
                    _ => kx.as_ref().same_content(ky),
                };
                n += u64::from(!same);
                i += 1;
                j += 1;
            }
            (Some((x, _)), Some((y, _))) if x < *y => {
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

/// Attributes and entries (strictly sorted by name) in the entry encoding of a directory
/// node, never paged and without a magic: the form workspace journal records take
/// (`docs/format.md`). Appends to `out`.
pub(crate) fn encode_plain(out: &mut Vec<u8>, attrs: &Attrs, entries: &[(&Name, EntryRef<'_>)]) {
    put_attrs(out, attrs, true);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    // The fingerprint is not needed here; the hasher's input is thrown away.
    encode_entries(out, &mut blake3::Hasher::new(), entries);
}

pub(super) fn put_attrs(out: &mut Vec<u8>, a: &Attrs, with_time: bool) {
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
