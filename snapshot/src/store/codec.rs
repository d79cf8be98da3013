//! Value codecs: every stored object starts with a one-byte tag saying how the rest is
//! encoded. A commit writes raw or lz4 (lz4 only when it makes the value smaller);
//! packing (`pack.rs`) later rewrites values as zstd, or as zstd deltas against another
//! object. Every encoding of an object decodes to the same bytes, and every read
//! verifies them against the object's hash.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::hash::Hash;

/// Tag: payload is the object's bytes as they are.
pub const CODEC_RAW: u8 = 0;
/// Tag: payload is lz4 block format with the uncompressed length prepended (u32 LE).
pub const CODEC_LZ4: u8 = 1;
/// Tag: payload is one zstd frame that records its content size.
pub const CODEC_ZSTD: u8 = 2;
/// Tag: payload is the 32-byte hash of a base object, then one zstd frame (recording its
/// content size) compressed with the base object's bytes as its prefix.
pub const CODEC_DELTA: u8 = 3;

/// The largest object a zstd frame may claim to decode to.
const MAX_DECODED: u64 = 1 << 30;

/// Objects smaller than this are not worth trying to compress.
const MIN_COMPRESS: usize = 64;

/// Encodes `bytes` with the smaller of raw and lz4.
pub fn encode(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() >= MIN_COMPRESS && bytes.len() <= u32::MAX as usize {
        let packed = lz4_flex::block::compress_prepend_size(bytes);
        if packed.len() < bytes.len() {
            let mut out = Vec::with_capacity(packed.len() + 1);
            out.push(CODEC_LZ4);
            out.extend_from_slice(&packed);
            return out;
        }
    }
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(CODEC_RAW);
    out.extend_from_slice(bytes);
    out
}

/// A zstd error code as an error.
fn zstd_error(code: usize) -> Error {
    Error::InvalidArgument(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
}

/// `bytes` as one zstd frame at `level`, with `prefix` (a similar object) as its
/// single-use dictionary when given.
fn zstd_frame(bytes: &[u8], prefix: Option<&[u8]>, level: i32) -> Result<Vec<u8>> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let fail = zstd_error;
    let mut cx = CCtx::create();
    cx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(fail)?;
    cx.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(fail)?;
    if let Some(p) = prefix {
        cx.ref_prefix(p).map_err(fail)?;
    }
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(bytes.len()));
    cx.compress2(&mut out, bytes).map_err(fail)?;
    Ok(out)
}

/// The value of `bytes` as a zstd frame at `level`.
pub fn encode_zstd(bytes: &[u8], level: i32) -> Result<Vec<u8>> {
    let frame = zstd_frame(bytes, None, level)?;
    let mut out = Vec::with_capacity(frame.len() + 1);
    out.push(CODEC_ZSTD);
    out.extend_from_slice(&frame);
    Ok(out)
}

/// The value of `bytes` as a delta against the object `base` (whose bytes are
/// `base_bytes`), at zstd `level`.
pub fn encode_delta(bytes: &[u8], base: &Hash, base_bytes: &[u8], level: i32) -> Result<Vec<u8>> {
    Ok(delta_value(
        base,
        &zstd_frame(bytes, Some(base_bytes), level)?,
    ))
}

/// A delta value: the tag, the base's hash, the frame.
fn delta_value(base: &Hash, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 33);
    out.push(CODEC_DELTA);
    out.extend_from_slice(base.as_bytes());
    out.extend_from_slice(frame);
    out
}

/// A base object digested once for many deltas against it (`encode_delta_prepared`).
pub struct PreparedBase(zstd::zstd_safe::CDict<'static>);

impl PreparedBase {
    /// `base_bytes` as a raw-content dictionary at zstd `level`.
    pub fn new(base_bytes: &[u8], level: i32) -> Result<PreparedBase> {
        zstd::zstd_safe::CDict::try_create(base_bytes, level)
            .map(PreparedBase)
            .ok_or_else(|| Error::InvalidArgument("zstd: cannot digest a base object".into()))
    }
}

/// `encode_delta` against a base digested once: the same frames a prefix gives (a
/// raw-content dictionary is a prefix to the decoder), without indexing the base for
/// every object.
pub fn encode_delta_prepared(
    bytes: &[u8],
    base: &Hash,
    prepared: &PreparedBase,
) -> Result<Vec<u8>> {
    let mut cx = zstd::zstd_safe::CCtx::create();
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(bytes.len()));
    cx.compress_using_cdict(&mut frame, bytes, &prepared.0)
        .map_err(zstd_error)?;
    Ok(delta_value(base, &frame))
}

/// The base object a delta value needs; `None` for every other value.
pub fn delta_base(value: &[u8]) -> Option<Hash> {
    match value.split_first() {
        Some((&CODEC_DELTA, rest)) if rest.len() >= 32 => Hash::from_slice(&rest[..32]).ok(),
        _ => None,
    }
}

/// Decodes a zstd frame, with `prefix` when it was compressed with one.
fn unzstd(frame: &[u8], prefix: Option<&[u8]>) -> std::result::Result<Vec<u8>, String> {
    use zstd::zstd_safe::DCtx;
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n <= MAX_DECODED => n as usize,
        Ok(Some(n)) => return Err(format!("zstd frame claims {n} bytes")),
        _ => return Err("zstd frame without a content size".into()),
    };
    let mut dx = DCtx::create();
    if let Some(p) = prefix {
        dx.ref_prefix(p)
            .map_err(|c| zstd::zstd_safe::get_error_name(c).to_string())?;
    }
    let mut out = Vec::with_capacity(size);
    dx.decompress(&mut out, frame)
        .map_err(|c| format!("zstd: {}", zstd::zstd_safe::get_error_name(c)))?;
    if out.len() != size {
        return Err(format!("zstd frame gave {} of {size} bytes", out.len()));
    }
    Ok(out)
}

/// Decodes a stored value and verifies it hashes to `hash`. A delta asks `base` for the
/// bytes of its base object.
pub fn decode_with(
    hash: &Hash,
    value: &[u8],
    base: &mut dyn FnMut(&Hash) -> Result<Arc<[u8]>>,
) -> Result<Vec<u8>> {
    let corrupt = |reason: String| Error::Corrupt {
        hash: *hash,
        reason,
    };
    let (&tag, payload) = value
        .split_first()
        .ok_or_else(|| corrupt("empty value".into()))?;
    let bytes = match tag {
        CODEC_RAW => payload.to_vec(),
        CODEC_LZ4 => lz4_flex::block::decompress_size_prepended(payload)
            .map_err(|e| corrupt(format!("lz4: {e}")))?,
        CODEC_ZSTD => unzstd(payload, None).map_err(corrupt)?,
        CODEC_DELTA => {
            let b = delta_base(value).ok_or_else(|| corrupt("delta without a base".into()))?;
            if b == *hash {
                return Err(corrupt("a delta against itself".into()));
            }
            let base_bytes = base(&b)?;
            unzstd(&payload[32..], Some(&base_bytes)).map_err(corrupt)?
        }
        other => return Err(corrupt(format!("unknown codec tag {other}"))),
    };
    let actual = Hash::of(&bytes);
    if actual != *hash {
        return Err(corrupt(format!("content hashes to {}", actual.short())));
    }
    Ok(bytes)
}

/// `decode_with` for a value that needs no base (a delta is refused as corrupt).
#[cfg(test)]
pub fn decode(hash: &Hash, value: &[u8]) -> Result<Vec<u8>> {
    decode_with(hash, value, &mut |b| {
        Err(Error::Corrupt {
            hash: *hash,
            reason: format!("a delta against {}, read without a store", b.short()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_picks_the_smaller_codec() {
        let text = b"abcabcabcabc".repeat(100);
        let enc = encode(&text);
        assert_eq!(enc[0], CODEC_LZ4);
        assert!(enc.len() < text.len());
        assert_eq!(decode(&Hash::of(&text), &enc).expect("decodes"), text);

        let noise: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let enc = encode(&noise);
        assert_eq!(decode(&Hash::of(&noise), &enc).expect("decodes"), noise);
    }

    #[test]
    fn corruption_is_an_error_naming_the_object() {
        let data = b"hello world".to_vec();
        let h = Hash::of(&data);
        let mut enc = encode(&data);
        enc[3] ^= 1;
        match decode(&h, &enc) {
            Err(Error::Corrupt { hash, .. }) => assert_eq!(hash, h),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(matches!(decode(&h, &[9, 1, 2]), Err(Error::Corrupt { .. })));
        assert!(matches!(decode(&h, &[]), Err(Error::Corrupt { .. })));
    }
}
