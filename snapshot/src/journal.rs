//! The workspace journal: a workspace's uncommitted changes as of its last sync (an
//! `fsync`, `fdatasync` or `syncfs` inside it), so that what a program made durable
//! survives a crash of the daemon, as a journaling filesystem keeps it across a power cut.
//!
//! One record per journaled inode, in the `journal` column family under the workspace's
//! id and the inode number: a changed directory (its attributes and every entry), or a
//! file whose own copy holds data no commit has stored (its attributes and the own-copy
//! id; the bytes stay in the own copy, which the sync fsyncs). Everything else is
//! recorded by value inside its directory's record, in the tree's entry encoding. A sync
//! rewrites only the records that changed since the previous one, in one synced batch, so
//! its cost follows what changed, not the size of the workspace. A commit (snapshot, save
//! at close) or a checkout leaves nothing uncommitted and deletes the records in the same
//! batch that moves the workspace.

use rustc_hash::FxHashMap;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::ids::{Ino, WorkspaceId};
use crate::name::Name;
use crate::store::{Backend, Batch, Cf};
use crate::tree::{self, Attrs, Content, EntryKind, EntryRef};

const TAG_DIR: u8 = 1;
const TAG_FILE: u8 = 2;

/// A directory entry in a journal record.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Child {
    /// A journaled inode, with a record of its own.
    Inode(Ino),
    /// Anything else, by value.
    Entry(EntryKind),
}

/// One journaled inode.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Record {
    /// A changed directory.
    Dir {
        attrs: Attrs,
        entries: Vec<(Name, Child)>,
    },
    /// A file whose own copy `own` holds uncommitted data.
    File { attrs: Attrs, own: u64 },
}

/// The key of `ino`'s record: workspace id, then inode number (both u64 BE).
pub(crate) fn key(ws: WorkspaceId, ino: Ino) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&ws.key());
    k[8..].copy_from_slice(&ino.0.to_be_bytes());
    k
}

/// Encodes a directory record. `by_value` and `linked` are each sorted by name.
pub(crate) fn encode_dir(
    attrs: &Attrs,
    by_value: &[(&Name, EntryRef<'_>)],
    linked: &[(&Name, Ino)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + by_value.len() * 96 + linked.len() * 24);
    out.push(TAG_DIR);
    tree::encode_plain(&mut out, attrs, by_value);
    out.extend_from_slice(&(linked.len() as u32).to_be_bytes());
    for (name, ino) in linked {
        out.push(name.as_bytes().len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&ino.0.to_be_bytes());
    }
    out
}

/// Encodes a file record.
pub(crate) fn encode_file(attrs: &Attrs, own: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(TAG_FILE);
    out.extend_from_slice(&own.to_be_bytes());
    tree::encode_plain(&mut out, attrs, &[]);
    out
}

fn decode(what: &str, v: &[u8]) -> Result<Record> {
    let corrupt = |reason: &str| Error::CorruptRecord {
        key: what.to_string(),
        reason: reason.to_string(),
    };
    let (&tag, rest) = v.split_first().ok_or_else(|| corrupt("empty"))?;
    match tag {
        TAG_DIR => {
            let (attrs, by_value, used) = tree::decode_plain(what, rest)?;
            let mut r = &rest[used..];
            let mut take = |n: usize| -> Result<&[u8]> {
                if r.len() < n {
                    return Err(corrupt("truncated"));
                }
                let (a, b) = r.split_at(n);
                r = b;
                Ok(a)
            };
            let count = u32::from_be_bytes(take(4)?.try_into().map_err(|_| corrupt("count"))?);
            let mut entries: Vec<(Name, Child)> = by_value
                .into_iter()
                .map(|(n, k)| (n, Child::Entry(k)))
                .collect();
            for _ in 0..count {
                let len = take(1)?[0] as usize;
                let name = Name::new(take(len)?).map_err(|e| corrupt(&e.to_string()))?;
                let ino = u64::from_be_bytes(take(8)?.try_into().map_err(|_| corrupt("ino"))?);
                entries.push((name, Child::Inode(Ino(ino))));
            }
            if !r.is_empty() {
                return Err(corrupt("trailing bytes"));
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            if entries.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(corrupt("a name appears twice"));
            }
            Ok(Record::Dir { attrs, entries })
        }
        TAG_FILE => {
            if rest.len() < 8 {
                return Err(corrupt("truncated"));
            }
            let own = u64::from_be_bytes(rest[..8].try_into().map_err(|_| corrupt("own"))?);
            let (attrs, entries, used) = tree::decode_plain(what, &rest[8..])?;
            if !entries.is_empty() || used != rest.len() - 8 {
                return Err(corrupt("trailing bytes"));
            }
            Ok(Record::File { attrs, own })
        }
        other => Err(corrupt(&format!("unknown record tag {other}"))),
    }
}

/// Every journal record of workspace `ws`.
pub(crate) fn load(backend: &dyn Backend, ws: WorkspaceId) -> Result<FxHashMap<Ino, Record>> {
    let mut out = FxHashMap::default();
    backend.scan(Cf::Journal, &ws.key(), &mut |k, v| {
        if k.len() != 16 {
            return Err(Error::CorruptRecord {
                key: format!("journal/{k:?}"),
                reason: "key is not 16 bytes".into(),
            });
        }
        let ino = Ino(u64::from_be_bytes(k[8..].try_into().unwrap_or_default()));
        out.insert(ino, decode(&format!("journal/{ws}/{ino}"), v)?);
        Ok(true)
    })?;
    Ok(out)
}

/// Stages the deletion of every journal record of `ws` (for a workspace being deleted).
pub(crate) fn stage_clear_all(backend: &dyn Backend, ws: WorkspaceId, b: &mut Batch) -> Result<()> {
    backend.scan(Cf::Journal, &ws.key(), &mut |k, _| {
        b.delete(Cf::Journal, k.to_vec());
        Ok(true)
    })
}

/// The stored objects journal records reach by value: directory nodes and file
/// contents, which gc must keep and fsck must find.
pub(crate) fn refs(records: &FxHashMap<Ino, Record>) -> (Vec<Hash>, Vec<Content>) {
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    for rec in records.values() {
        if let Record::Dir { entries, .. } = rec {
            for (_, child) in entries {
                match child {
                    Child::Entry(EntryKind::Dir { node, .. }) => dirs.push(*node),
                    Child::Entry(EntryKind::File { content, .. }) => files.push(*content),
                    _ => {}
                }
            }
        }
    }
    (dirs, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::try_from(s).expect("name")
    }

    #[test]
    fn records_round_trip() {
        let attrs = Attrs {
            mode: 0o755,
            uid: 1,
            gid: 2,
            mtime: 42,
            xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
        };
        let content = Content {
            hash: Hash::of(b"x"),
            chunked: false,
            size: 1,
        };
        let (a, c, z) = (name("a"), name("c"), name("z"));
        let v = encode_dir(
            &attrs,
            &[(
                &c,
                EntryRef::File {
                    attrs: &attrs,
                    content,
                },
            )],
            &[(&a, Ino(7)), (&z, Ino(9))],
        );
        let rec = decode("t", &v).expect("decode");
        let Record::Dir {
            attrs: got,
            entries,
        } = rec
        else {
            panic!("not a dir")
        };
        assert_eq!(got, attrs);
        let names: Vec<&[u8]> = entries.iter().map(|(n, _)| n.as_bytes()).collect();
        assert_eq!(names, [&b"a"[..], b"c", b"z"]);
        assert_eq!(entries[0].1, Child::Inode(Ino(7)));
        let f = encode_file(&attrs, 77);
        assert_eq!(
            decode("t", &f).expect("decode"),
            Record::File { attrs, own: 77 }
        );
    }

    #[test]
    fn garbage_is_a_named_error() {
        for bad in [&b""[..], b"\x01", b"\x02\x00", b"\x09abc"] {
            let e = decode("journal/w1/5", bad).expect_err("garbage");
            assert!(e.to_string().contains("journal/w1/5"), "{e}");
        }
    }
}
