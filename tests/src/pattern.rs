//! A deterministic byte pattern for large bodies.
//!
//! Byte `o` of a patterned body is `o % 251`. 251 is prime and not a power of
//! two, so a dropped, duplicated or reordered chunk of any power-of-two size
//! shows up as a mismatch, not only as a wrong length. Chunks are slices of one
//! shared buffer, so producing or checking a 1 GiB body allocates nothing per
//! chunk and compares with `memcmp` (fast even in this unoptimised crate).

use std::sync::OnceLock;

use bytes::Bytes;

/// Size of the chunks the upstream and the test clients stream.
pub const CHUNK: usize = 64 * 1024;

const PERIOD: usize = 251;

fn buffer() -> &'static Bytes {
    static BUF: OnceLock<Bytes> = OnceLock::new();
    BUF.get_or_init(|| {
        (0..CHUNK + PERIOD)
            .map(|i| (i % PERIOD) as u8)
            .collect::<Vec<u8>>()
            .into()
    })
}

/// The `len` (at most [`CHUNK`]) pattern bytes that start at body offset `offset`.
pub fn chunk_at(offset: u64, len: usize) -> Bytes {
    assert!(len <= CHUNK, "pattern chunks are at most {CHUNK} bytes");
    let start = (offset % PERIOD as u64) as usize;
    buffer().slice(start..start + len)
}

/// Whether `data`, found at body offset `offset`, is what the pattern has there.
pub fn matches_at(offset: u64, data: &[u8]) -> bool {
    let mut pos = 0;
    while pos < data.len() {
        let n = (data.len() - pos).min(CHUNK);
        if data[pos..pos + n] != chunk_at(offset + pos as u64, n)[..] {
            return false;
        }
        pos += n;
    }
    true
}

/// A stream of pattern chunks totalling `total` bytes, for request bodies.
pub fn stream(
    total: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(0u64, move |offset| async move {
        if offset >= total {
            return None;
        }
        let n = (total - offset).min(CHUNK as u64) as usize;
        Some((Ok(chunk_at(offset, n)), offset + n as u64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_detects_a_shifted_chunk() {
        let a = chunk_at(0, 1000);
        assert!(matches_at(0, &a));
        assert!(!matches_at(1, &a));
        assert!(matches_at(
            CHUNK as u64 * 3,
            &chunk_at(CHUNK as u64 * 3, CHUNK)
        ));
        assert!(!matches_at(0, &chunk_at(CHUNK as u64, CHUNK)));
    }
}
