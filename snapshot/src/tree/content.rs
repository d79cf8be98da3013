//! File contents: one chunk, or FastCDC chunks and a chunk list; storing, hashing
//! without storing, and writing a content back out.

use super::*;

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
pub(super) fn content_of(
    reader: impl Read,
    mut put: impl FnMut(&[u8]) -> Result<Hash>,
) -> Result<Content> {
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
