//! Value codecs: every stored object starts with a one-byte tag saying how the rest is
//! encoded. lz4 is used only when it makes the value smaller.

use crate::error::{Error, Result};
use crate::hash::Hash;

/// Tag: payload is the object's bytes as they are.
pub const CODEC_RAW: u8 = 0;
/// Tag: payload is lz4 block format with the uncompressed length prepended (u32 LE).
pub const CODEC_LZ4: u8 = 1;

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

/// Decodes a stored value and verifies it hashes to `hash`.
pub fn decode(hash: &Hash, value: &[u8]) -> Result<Vec<u8>> {
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
        other => return Err(corrupt(format!("unknown codec tag {other}"))),
    };
    let actual = Hash::of(&bytes);
    if actual != *hash {
        return Err(corrupt(format!("content hashes to {}", actual.short())));
    }
    Ok(bytes)
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
