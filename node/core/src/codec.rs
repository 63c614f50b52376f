//! The one place where bytes become values and back.
//!
//! bincode 1.3 is used only through this module. Decoding always has a byte limit and rejects
//! trailing bytes, so a hostile length prefix can neither allocate past the limit nor smuggle
//! extra data; any byte string decodes to a value or an error, never a panic.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable message: {0}")]
pub struct CodecError(String);

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Encodes a value. Our own values always encode.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    options()
        .serialize(value)
        .expect("serializing an in-memory value cannot fail")
}

/// Appends the encoding of a value to `out`: the same bytes as [`encode`], without a buffer of
/// its own.
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    let size = options()
        .serialized_size(value)
        .expect("sizing an in-memory value cannot fail");
    out.reserve(size as usize);
    options()
        .serialize_into(out, value)
        .expect("serializing an in-memory value cannot fail");
}

/// Appends the encoding of a value in one pass, for values that cost as much to size as to
/// encode; the same bytes as [`encode`].
pub fn append_unsized<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    options()
        .serialize_into(out, value)
        .expect("serializing an in-memory value cannot fail");
}

/// Appends the encoding of a byte string (as `serde_bytes` encodes one) whose contents `write`
/// appends to `out`, so that bytes produced by another encoder need no copy of their own.
pub fn encode_bytes_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    // Fixed-width encoding: the length is a u64, little-endian, before the bytes.
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    write(out);
    let len = (out.len() - start - 8) as u64;
    out[start..start + 8].copy_from_slice(&len.to_le_bytes());
}

/// Decodes `bytes`, refusing anything longer than `limit` or with bytes left over.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: u64) -> Result<T, CodecError> {
    if bytes.len() as u64 > limit {
        return Err(CodecError(format!(
            "{} bytes is over the limit of {limit}",
            bytes.len()
        )));
    }
    options()
        .with_limit(limit)
        .deserialize(bytes)
        .map_err(|e| CodecError(e.to_string()))
}

/// Durations written as whole milliseconds (`view_change_timeout_ms = 2000`), for
/// `#[serde(with = "pbft_core::codec::millis")]`.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// A [`Duration`](std::time::Duration) as whole microseconds, for serde's `with`.
pub mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Nested {
        #[serde(with = "serde_bytes")]
        inner: Vec<u8>,
        after: Vec<u32>,
    }

    #[test]
    fn writing_in_place_gives_the_bytes_encode_gives() {
        let value = Nested {
            inner: encode(&(7u64, "state")),
            after: vec![1, 2, 3],
        };
        let mut out = vec![9];
        encode_bytes_with(&mut out, |out| encode_into(out, &(7u64, "state")));
        encode_into(&mut out, &value.after);
        assert_eq!(out[0], 9);
        assert_eq!(&out[1..], encode(&value).as_slice());
    }
}
