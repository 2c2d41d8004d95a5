//! gRPC over HTTP/2 wire pieces: length-prefixed messages, status codes, `grpc-message`
//! percent-encoding, `grpc-timeout`, and `-bin` metadata.

use bytes::{Buf, Bytes, BytesMut};
use std::time::Duration;

/// The original's message cap in both directions (4 MiB).
pub const DEFAULT_MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// gRPC status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    /// 0
    Ok = 0,
    /// 1
    Cancelled = 1,
    /// 2
    Unknown = 2,
    /// 3
    InvalidArgument = 3,
    /// 4
    DeadlineExceeded = 4,
    /// 5
    NotFound = 5,
    /// 6
    AlreadyExists = 6,
    /// 7
    PermissionDenied = 7,
    /// 8
    ResourceExhausted = 8,
    /// 9
    FailedPrecondition = 9,
    /// 10
    Aborted = 10,
    /// 11
    OutOfRange = 11,
    /// 12
    Unimplemented = 12,
    /// 13
    Internal = 13,
    /// 14
    Unavailable = 14,
    /// 15
    DataLoss = 15,
    /// 16
    Unauthenticated = 16,
}

impl Code {
    /// From the numeric value; unknown values are `Unknown` (as gRPC specifies).
    pub fn from_u32(value: u32) -> Self {
        use Code::*;
        match value {
            0 => Ok,
            1 => Cancelled,
            2 => Unknown,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }
}

/// A gRPC status: code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Code.
    pub code: Code,
    /// Human-readable message (sent percent-encoded).
    pub message: String,
}

impl Status {
    /// A status with a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// OK.
    pub fn ok() -> Self {
        Self::new(Code::Ok, "")
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

/// Appends one length-prefixed, uncompressed message.
pub fn encode_message(message: &[u8], out: &mut BytesMut) {
    out.reserve(5 + message.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
}

/// Incremental decoder of length-prefixed messages from DATA frames.
pub struct MessageDecoder {
    buf: BytesMut,
    max: usize,
}

impl MessageDecoder {
    /// A decoder refusing messages above `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Adds bytes from a DATA frame.
    pub fn handle_input(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed, or the status to end the
    /// call with. The length is checked before the message is buffered.
    pub fn poll_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let compressed = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if compressed > 1 {
            return Err(Status::new(Code::Internal, "invalid message flags"));
        }
        if compressed == 1 {
            return Err(Status::new(
                Code::Unimplemented,
                "compressed messages are not supported (no grpc-encoding negotiated)",
            ));
        }
        if len > self.max {
            return Err(Status::new(
                Code::OutOfRange,
                format!(
                    "message of {len} bytes is larger than the limit of {} bytes",
                    self.max
                ),
            ));
        }
        if self.buf.len() < 5 + len {
            self.buf.reserve(5 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// True if a partial message is buffered (an error at end of stream).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Percent-encodes a `grpc-message` value (gRPC HTTP/2 protocol: everything outside 0x20..=0x7e
/// and `%` itself is encoded).
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &byte in message.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded `grpc-message`; malformed escapes are kept as they are and invalid
/// UTF-8 is replaced, as the spec asks of receivers.
pub fn percent_decode(value: &[u8]) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' && i + 2 < value.len() {
            let hex = std::str::from_utf8(&value[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(value[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `grpc-timeout` (1 to 8 digits and a unit H M S m u n). `None` if malformed.
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a timeout for `grpc-timeout` with the finest unit that fits 8 digits.
pub fn format_timeout(timeout: Duration) -> String {
    let nanos = timeout.as_nanos();
    for (unit, per) in [
        ("n", 1u128),
        ("u", 1_000),
        ("m", 1_000_000),
        ("S", 1_000_000_000),
        ("M", 60_000_000_000),
        ("H", 3_600_000_000_000),
    ] {
        let value = nanos.div_ceil(per);
        if value < 100_000_000 {
            return format!("{value}{unit}");
        }
    }
    "99999999H".into()
}

/// Whether a metadata key carries binary values (base64 on the wire).
pub fn is_binary_key(key: &[u8]) -> bool {
    key.ends_with(b"-bin")
}

/// Base64 for `-bin` metadata: sent unpadded, accepted padded or not.
const BIN_METADATA: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Encodes a `-bin` metadata value.
pub fn base64_encode(input: &[u8]) -> String {
    base64::Engine::encode(&BIN_METADATA, input)
}

/// Decodes a `-bin` metadata value. `None` if malformed.
pub fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    base64::Engine::decode(&BIN_METADATA, input).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oversized_messages_are_out_of_range_before_buffering() {
        let mut d = MessageDecoder::new(DEFAULT_MAX_MESSAGE);
        d.handle_input(&[0, 0x00, 0x40, 0x00, 0x01]);
        let status = d.poll_message().unwrap_err();
        assert_eq!(status.code, Code::OutOfRange);
        assert!(status.message.contains("4194305"));
    }

    #[test]
    fn compressed_messages_are_refused() {
        let mut d = MessageDecoder::new(100);
        d.handle_input(&[1, 0, 0, 0, 1, 0]);
        assert_eq!(d.poll_message().unwrap_err().code, Code::Unimplemented);
        let mut d = MessageDecoder::new(100);
        d.handle_input(&[7, 0, 0, 0, 0]);
        assert_eq!(d.poll_message().unwrap_err().code, Code::Internal);
    }

    #[test]
    fn percent_encoding_follows_the_spec() {
        assert_eq!(
            percent_encode("Hello 100% ✓\n"),
            "Hello 100%25 %E2%9C%93%0A"
        );
        assert_eq!(
            percent_decode(b"Hello 100%25 %E2%9C%93%0A"),
            "Hello 100% ✓\n"
        );
        // Malformed escapes pass through.
        assert_eq!(percent_decode(b"bad %zz and %4"), "bad %zz and %4");
    }

    #[test]
    fn timeouts_parse_and_format() {
        assert_eq!(parse_timeout(b"1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout(b"123456789S"), None);
        assert_eq!(parse_timeout(b"S"), None);
        assert_eq!(parse_timeout(b"10x"), None);
        assert_eq!(parse_timeout(b"-1S"), None);
        assert_eq!(format_timeout(Duration::from_millis(1500)), "1500000u");
        let month = Duration::from_secs(86_400 * 30);
        assert!(parse_timeout(format_timeout(month).as_bytes()).unwrap() >= month);
    }

    #[test]
    fn binary_metadata_round_trips() {
        assert!(is_binary_key(b"x-trace-bin"));
        assert_eq!(base64_encode(b"\xab\xab\xab"), "q6ur");
        assert_eq!(base64_decode(b"q6ur"), Some(b"\xab\xab\xab".to_vec()));
        assert_eq!(base64_decode(b"YQ=="), Some(b"a".to_vec()));
        assert_eq!(base64_decode(b"Y"), None);
        assert_eq!(base64_decode(b"a*bc"), None);
    }

    proptest! {
        #[test]
        fn messages_survive_any_chunking(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..500), 0..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut wire = BytesMut::new();
            for m in &messages {
                encode_message(m, &mut wire);
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut d = MessageDecoder::new(1000);
            let mut got = Vec::new();
            let mut start = 0;
            for cut in points.into_iter().chain(std::iter::once(wire.len())) {
                d.handle_input(&wire[start..cut]);
                while let Some(m) = d.poll_message().unwrap() {
                    got.push(m.to_vec());
                }
                start = cut;
            }
            prop_assert_eq!(got, messages);
            prop_assert!(!d.has_partial());
        }

        #[test]
        fn percent_and_base64_round_trip(text in ".*", bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(percent_decode(percent_encode(&text).as_bytes()), text);
            prop_assert_eq!(base64_decode(base64_encode(&bytes).as_bytes()), Some(bytes));
        }

        #[test]
        fn timeouts_round_trip(ms in 0u64..10_000_000_000) {
            let t = Duration::from_millis(ms);
            let parsed = parse_timeout(format_timeout(t).as_bytes()).unwrap();
            prop_assert!(parsed >= t);
        }
    }
}
