//! Server-sent events: the `text/event-stream` format of the WHATWG HTML standard ("Server-sent
//! events", section 9.2.6, interpreting an event stream), decoded without IO. OpenAI-compatible
//! servers stream chat completions in it.
//!
//! Bytes go in with [`SseDecoder::handle_input`] in any chunking. Events come out of
//! [`SseDecoder::poll_event`], and [`SseDecoder::finish`] is called at the end of the stream.
//!
//! - Lines end with CRLF, LF or CR, and a leading byte-order mark is dropped.
//! - `:` lines are comments.
//! - `data` lines are joined with LF, and `event`, `id` and `retry` work as the standard says.
//! - A blank line dispatches the event, if it has data.
//! - A peer cannot make the decoder hold more than one line of [`SseLimits::max_line_bytes`] and
//!   one event of [`SseLimits::max_event_bytes`]. Beyond that it fails with a typed error.

use std::collections::VecDeque;

/// Limits on what a peer's event stream may make the decoder hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseLimits {
    /// Longest line (field name and value), in bytes, without its line ending.
    pub max_line_bytes: usize,
    /// Largest event: the joined `data` lines, in bytes.
    pub max_event_bytes: usize,
    /// Events decoded but not yet taken with [`SseDecoder::poll_event`]; input beyond is an
    /// error, so a caller that feeds without draining is told rather than buffered for.
    pub max_queued_events: usize,
}

impl Default for SseLimits {
    fn default() -> Self {
        Self {
            max_line_bytes: 256 * 1024,
            max_event_bytes: 1024 * 1024,
            max_queued_events: 4096,
        }
    }
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field, or `message` when there was none.
    pub event: String,
    /// The `data` lines, joined with LF.
    pub data: String,
    /// The last event ID seen so far in the stream (empty when none was set).
    pub id: String,
}

/// Why a stream cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line was longer than the limit.
    #[error("event-stream line longer than {max} bytes")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
    /// An event's data was larger than the limit.
    #[error("event-stream event larger than {max} bytes")]
    EventTooLarge {
        /// The limit.
        max: usize,
    },
    /// More events were decoded than the caller took.
    #[error("more than {max} event-stream events decoded and not taken")]
    TooManyQueued {
        /// The limit.
        max: usize,
    },
}

/// The decoder: bytes in, [`SseEvent`]s out.
#[derive(Debug)]
pub struct SseDecoder {
    limits: SseLimits,
    /// The line being received (without its ending).
    line: Vec<u8>,
    /// The previous input ended with CR, so a LF that comes next belongs to that line ending.
    after_cr: bool,
    /// No line has been completed yet (a byte-order mark may start the first one).
    first_line: bool,
    event_type: String,
    /// The data buffer, every `data` value followed by LF.
    data: String,
    /// A `data` field was seen since the last dispatch.
    has_data: bool,
    last_id: String,
    retry_ms: Option<u64>,
    events: VecDeque<SseEvent>,
    failed: Option<SseError>,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new(SseLimits::default())
    }
}

impl SseDecoder {
    /// A decoder for a new stream.
    pub fn new(limits: SseLimits) -> Self {
        Self {
            limits,
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            event_type: String::new(),
            data: String::new(),
            has_data: false,
            last_id: String::new(),
            retry_ms: None,
            events: VecDeque::new(),
            failed: None,
        }
    }

    /// Feeds the next bytes of the stream. After an error, the decoder stays failed.
    pub fn handle_input(&mut self, mut bytes: &[u8]) -> Result<(), SseError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        while !bytes.is_empty() {
            if std::mem::take(&mut self.after_cr) && bytes[0] == b'\n' {
                bytes = &bytes[1..];
                continue;
            }
            let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.extend_line(bytes)?;
                break;
            };
            self.extend_line(&bytes[..end])?;
            self.after_cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            let line = std::mem::take(&mut self.line);
            if let Err(error) = self.handle_line(&line) {
                self.failed = Some(error.clone());
                return Err(error);
            }
            self.line = line;
            self.line.clear();
        }
        Ok(())
    }

    /// The next dispatched event, if any.
    pub fn poll_event(&mut self) -> Option<SseEvent> {
        self.events.pop_front()
    }

    /// Ends the stream. An event that was not ended by a blank line is discarded, as the
    /// standard says; the answer is whether there was one (or a partial line): a cut stream.
    pub fn finish(&mut self) -> bool {
        let cut = !self.line.is_empty() || self.has_data || !self.event_type.is_empty();
        self.line.clear();
        self.data.clear();
        self.event_type.clear();
        self.has_data = false;
        cut
    }

    /// The reconnection time the stream asked for (`retry`), in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// The last event ID the stream set (sent as `Last-Event-ID` when reconnecting).
    pub fn last_event_id(&self) -> &str {
        &self.last_id
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.limits.max_line_bytes {
            let error = SseError::LineTooLong {
                max: self.limits.max_line_bytes,
            };
            self.failed = Some(error.clone());
            return Err(error);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn handle_line(&mut self, mut line: &[u8]) -> Result<(), SseError> {
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => self.event_type = value.into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > self.limits.max_event_bytes {
                    return Err(SseError::EventTooLarge {
                        max: self.limits.max_event_bytes,
                    });
                }
                self.data.push_str(&value);
                self.data.push('\n');
                self.has_data = true;
            }
            b"id" if !value.contains('\0') => self.last_id = value.into_owned(),
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Digits only, so the parse fails only on overflow: the longest wait we can hold.
                self.retry_ms = Some(value.parse().unwrap_or(u64::MAX));
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self) -> Result<(), SseError> {
        let event_type = std::mem::take(&mut self.event_type);
        if !std::mem::take(&mut self.has_data) {
            self.data.clear();
            return Ok(());
        }
        if self.events.len() >= self.limits.max_queued_events {
            return Err(SseError::TooManyQueued {
                max: self.limits.max_queued_events,
            });
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the LF after the last data line
        self.events.push_back(SseEvent {
            event: match event_type.is_empty() {
                true => "message".to_owned(),
                false => event_type,
            },
            data,
            id: self.last_id.clone(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(input: &[u8]) -> (Vec<SseEvent>, bool) {
        let mut decoder = SseDecoder::default();
        decoder.handle_input(input).unwrap();
        let events = std::iter::from_fn(|| decoder.poll_event()).collect();
        (events, decoder.finish())
    }

    fn message(data: &str) -> SseEvent {
        SseEvent {
            event: "message".into(),
            data: data.into(),
            id: String::new(),
        }
    }

    #[test]
    fn the_standards_examples() {
        // Two events; the second's data is two lines.
        let (events, cut) = decode(b"data: YHOO\ndata: +2\ndata: 10\n\n");
        assert_eq!(events, vec![message("YHOO\n+2\n10")]);
        assert!(!cut);
        // A comment, an event with an id, an event, and an id alone: the id carries on.
        let input = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n";
        let (events, _) = decode(input);
        let data: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.data.as_str(), e.id.as_str()))
            .collect();
        assert_eq!(
            data,
            vec![
                ("first event", "1"),
                ("second event", ""),
                (" third event", "")
            ]
        );
        // An empty data field dispatches an empty event; one without data does not.
        let (events, _) = decode(b"data\n\ndata\ndata\n\ndata:\n");
        assert_eq!(events, vec![message(""), message("\n")]);
    }

    #[test]
    fn line_endings_bom_event_type_and_retry() {
        let mut decoder = SseDecoder::default();
        decoder
            .handle_input(
                b"\xEF\xBB\xBFevent: delta\r\ndata: a\rdata: b\r\n\r\nretry: 2500\nretry: x\n",
            )
            .unwrap();
        assert_eq!(
            decoder.poll_event(),
            Some(SseEvent {
                event: "delta".into(),
                data: "a\nb".into(),
                id: String::new(),
            })
        );
        assert_eq!(decoder.retry_ms(), Some(2500));
        // An id with NUL is ignored; the event type resets after a dispatch.
        decoder
            .handle_input(b"id: 7\nid: a\0b\ndata: x\n\n")
            .unwrap();
        assert_eq!(
            decoder.poll_event().map(|e| (e.event, e.id)),
            Some(("message".into(), "7".into()))
        );
        assert_eq!(decoder.last_event_id(), "7");
    }

    #[test]
    fn an_unterminated_event_is_discarded_and_reported_as_cut() {
        let (events, cut) = decode(b"data: {\"choices\":[]}\n\ndata: {\"cho");
        assert_eq!(events.len(), 1);
        assert!(cut, "the stream ended inside an event");
        let (_, cut) = decode(b"data: x\n");
        assert!(cut, "an event without its blank line is cut too");
    }

    #[test]
    fn limits_fail_typed_and_stay_failed() {
        let limits = SseLimits {
            max_line_bytes: 16,
            max_event_bytes: 8,
            max_queued_events: 2,
        };
        let mut long_line = SseDecoder::new(limits);
        assert_eq!(
            long_line.handle_input(&[b'a'; 17]),
            Err(SseError::LineTooLong { max: 16 })
        );
        assert!(long_line.handle_input(b"\n").is_err(), "stays failed");
        let mut big_event = SseDecoder::new(limits);
        assert_eq!(
            big_event.handle_input(b"data: 1234\ndata: 5678\n"),
            Err(SseError::EventTooLarge { max: 8 })
        );
        let mut undrained = SseDecoder::new(limits);
        assert_eq!(
            undrained.handle_input(b"data: 1\n\ndata: 2\n\ndata: 3\n\n"),
            Err(SseError::TooManyQueued { max: 2 })
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        let (events, _) = decode(b"data: caf\xC3\n\n");
        assert_eq!(events, vec![message("caf\u{FFFD}")]);
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(
            lines in prop::collection::vec(
                prop_oneof![
                    Just("".to_owned()),
                    Just(":comment".to_owned()),
                    "data:[ -~]{0,12}",
                    "event: [a-z]{1,5}",
                    "id: [0-9]{1,3}",
                    "retry: [0-9]{1,4}",
                    "[a-z]{1,4}",
                ],
                0..30,
            ),
            endings in prop::collection::vec(prop_oneof![Just("\n"), Just("\r"), Just("\r\n")], 30),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut input = Vec::new();
            for (line, ending) in lines.iter().zip(&endings) {
                input.extend_from_slice(line.as_bytes());
                input.extend_from_slice(ending.as_bytes());
            }
            let whole = decode(&input);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut decoder = SseDecoder::default();
            let mut events = Vec::new();
            let mut start = 0;
            for point in points.into_iter().chain([input.len()]) {
                decoder.handle_input(&input[start..point]).unwrap();
                events.extend(std::iter::from_fn(|| decoder.poll_event()));
                start = point;
            }
            prop_assert_eq!(&events, &whole.0);
            prop_assert_eq!(decoder.finish(), whole.1);
            // One byte at a time, too.
            let mut bytewise = SseDecoder::default();
            for byte in &input {
                bytewise.handle_input(std::slice::from_ref(byte)).unwrap();
            }
            let events: Vec<SseEvent> = std::iter::from_fn(|| bytewise.poll_event()).collect();
            prop_assert_eq!(events, whole.0);
        }
    }
}
