//! Incremental decoder of the chunked transfer coding (RFC 9112 section 7.1), bounded: size lines
//! and trailer sections have length limits, sizes have at most 16 hex digits, CRLF is required.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (size, extensions, CRLF).
pub const MAX_SIZE_LINE: usize = 1024;
/// Largest trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// What the decoder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// The last chunk and trailers were read: the body is complete.
    End,
}

/// Why a chunked body is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkedError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataCrlf,
    Trailers,
    Done,
}

/// The decoder; feed it with [`ChunkedDecoder::decode`].
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of the current size line or trailer section seen so far.
    line_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Size,
            line_len: 0,
        }
    }

    /// Whether the body ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes what it can from `buf`; `Ok(None)` means more input is needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, ChunkedError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Size => {
                    let Some(end) = find_crlf(buf) else {
                        if buf.len() > MAX_SIZE_LINE {
                            return Err(ChunkedError("chunk size line too long"));
                        }
                        return Ok(None);
                    };
                    if end > MAX_SIZE_LINE {
                        return Err(ChunkedError("chunk size line too long"));
                    }
                    let line = buf.split_to(end + 2);
                    let line = &line[..end];
                    // chunk-ext after ';' is allowed and ignored; the size is 1..=16 hex digits.
                    let size = line.split(|b| *b == b';').next().unwrap_or_default();
                    let size = trim_ows(size);
                    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit)
                    {
                        return Err(ChunkedError("bad chunk size"));
                    }
                    let text =
                        std::str::from_utf8(size).map_err(|_| ChunkedError("bad chunk size"))?;
                    let n = u64::from_str_radix(text, 16)
                        .map_err(|_| ChunkedError("bad chunk size"))?;
                    self.state = if n == 0 {
                        State::Trailers
                    } else {
                        State::Data(n)
                    };
                    self.line_len = 0;
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = (left.min(buf.len() as u64)) as usize;
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCrlf
                    } else {
                        State::Data(left)
                    };
                    return Ok(Some(Chunk::Data(data)));
                }
                State::DataCrlf => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|b| *b != b'\r') {
                            return Err(ChunkedError("chunk data not followed by CRLF"));
                        }
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkedError("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    // Trailer fields are read and dropped; the section ends with an empty line.
                    let Some(end) = find_crlf(buf) else {
                        if self.line_len + buf.len() > MAX_TRAILERS {
                            return Err(ChunkedError("trailer section too large"));
                        }
                        return Ok(None);
                    };
                    self.line_len += end + 2;
                    if self.line_len > MAX_TRAILERS {
                        return Err(ChunkedError("trailer section too large"));
                    }
                    let line = buf.split_to(end + 2);
                    if end == 0 {
                        self.state = State::Done;
                        return Ok(Some(Chunk::End));
                    }
                    if line[0] == b' ' || line[0] == b'\t' {
                        return Err(ChunkedError("obsolete line folding in trailers"));
                    }
                    if !line[..end].contains(&b':') {
                        return Err(ChunkedError("malformed trailer field"));
                    }
                }
            }
        }
    }
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Appends one chunk (nothing for empty data: an empty chunk would end the body).
pub fn encode_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk (no trailers).
pub fn encode_last(out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(input: &[u8], cuts: &[usize]) -> Result<Vec<u8>, ChunkedError> {
        let mut d = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut start = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.push(input.len());
        points.sort_unstable();
        for p in points {
            buf.extend_from_slice(&input[start..p.max(start)]);
            start = p.max(start);
            while let Some(chunk) = d.decode(&mut buf)? {
                match chunk {
                    Chunk::Data(b) => out.extend_from_slice(&b),
                    Chunk::End => return Ok(out),
                }
            }
        }
        Err(ChunkedError("incomplete"))
    }

    #[test]
    fn decodes_with_extensions_and_trailers() {
        let body =
            b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(
            decode_all(body, &[]).unwrap(),
            b"Wikipedia in\r\n\r\nchunks.".to_vec()
        );
    }

    #[test]
    fn rejects_malformed_sizes_and_framing() {
        for bad in [
            &b"g\r\nx\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"-1\r\n",
            b"11111111111111111\r\n",
            b"3\r\nabcX\r\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nnocolon\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, &[]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'1'; MAX_SIZE_LINE + 1];
        assert!(decode_all(&long, &[]).is_err());
    }

    proptest! {
        /// Any chunking of the input gives the same body.
        #[test]
        fn chunking_invariance(data in proptest::collection::vec(any::<u8>(), 0..3000),
                               sizes in proptest::collection::vec(1usize..700, 1..8),
                               cuts in proptest::collection::vec(any::<usize>(), 0..12)) {
            let mut wire = BytesMut::new();
            let mut rest = &data[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                encode_chunk(&mut wire, &rest[..n]);
                rest = &rest[n..];
                i += 1;
            }
            encode_last(&mut wire);
            prop_assert_eq!(decode_all(&wire, &cuts).unwrap(), data);
        }
    }
}
