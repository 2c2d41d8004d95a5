//! The node request engine: what a node-plane request means, whichever transport carried it.
//! The QUIC machine ([`crate::quic::server`]) and the gateway's NodeService (gRPC) both ask it
//! to turn a publish into the event the log stores, to decide where a `stream_events` starts,
//! who may see an event, and what `node.health` answers; transports only frame the results.

use super::log::{LogBounds, NewEvent, StoredEvent};
use super::message::{EventBody, PublishEvent, ResponseFrame};
use super::ErrorCode;

/// Bytes an event frame adds around the stored event body (`{"protocol_version":1,...,"event":`).
pub const EVENT_FRAME_OVERHEAD: usize = 96;

/// Why the engine refused a request; transports map the code to their own error (an error frame
/// on QUIC, a gRPC status on NodeService).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The node-plane error code.
    pub code: ErrorCode,
    /// What went wrong, for the peer.
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The event a publish by `device` stores: its body names the device (from its certificate,
/// never from the request) and the gateway's wall time `now_ms`. The body must fit in one event
/// frame of `max_frame_bytes` when streamed back.
pub fn publish(
    device: Option<&str>,
    event: PublishEvent,
    now_ms: u64,
    max_frame_bytes: usize,
) -> Result<NewEvent, Refusal> {
    let Some(device) = device else {
        return Err(Refusal::new(
            ErrorCode::Unauthorized,
            "publishing requires a device certificate",
        ));
    };
    let PublishEvent {
        name,
        payload,
        to,
        id,
    } = event;
    let body = EventBody {
        name,
        device_id: device.to_owned(),
        occurred_at_unix_ms: now_ms,
        payload,
        to: to.clone(),
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    if body.len() + EVENT_FRAME_OVERHEAD > max_frame_bytes {
        return Err(Refusal::new(
            ErrorCode::FrameTooLarge,
            "event is too large to be streamed back in one frame",
        ));
    }
    Ok(NewEvent {
        to,
        body: body.into(),
        id: id.map(|id| format!("{device}/{id}")),
    })
}

/// Where a `stream_events` with `resume_from` starts, given the log's bounds.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Serve the events with `seq > after`.
    After(u64),
    /// The cursor cannot be served; answer this error frame (`resume_gap`) and finish.
    Refused(Box<ResponseFrame>),
}

/// Decides where a stream resuming after `resume_from` (none: from the start) begins: events
/// dropped by retention and cursors ahead of the log both get `resume_gap` with the log's first
/// retained seq, so the node resynchronizes instead of silently missing events.
pub fn resume(resume_from: Option<u64>, bounds: LogBounds) -> Resume {
    let after = resume_from.unwrap_or(0);
    if after.saturating_add(1) < bounds.first_seq {
        return Resume::Refused(Box::new(ResponseFrame::resume_gap(after, bounds.first_seq)));
    }
    if after > bounds.last_seq {
        let mut frame = ResponseFrame::resume_gap(after, bounds.first_seq);
        frame.message = Some(format!(
            "resume_from {after} is ahead of the log (last seq {}); resynchronize from first_seq",
            bounds.last_seq
        ));
        return Resume::Refused(Box::new(frame));
    }
    Resume::After(after)
}

/// Whether the peer (`device`, or an anonymous reader) may see `event`: devices see broadcasts
/// and events addressed to them; anonymous readers see broadcasts only.
pub fn visible(event: &StoredEvent, device: Option<&str>) -> bool {
    match device {
        Some(device) => event.visible_to(device),
        None => event.to.is_none(),
    }
}

/// The `node.health` answer for `device` (if authenticated) at wall time `now_ms`.
pub fn health(mtls_required: bool, device: Option<&str>, now_ms: u64) -> ResponseFrame {
    ResponseFrame::health(mtls_required, device.map(str::to_owned), now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn publish_of(name: &str, payload: serde_json::Value, to: Option<&str>) -> PublishEvent {
        PublishEvent {
            name: name.into(),
            payload,
            to: to.map(Into::into),
            id: None,
        }
    }

    #[test]
    fn a_publish_is_stamped_with_the_certificates_device_and_the_gateways_time() {
        let event = publish(
            Some("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            publish_of(
                "sensor.temp",
                json!({"c": 21.5}),
                Some("01BX5ZZKBKACTAV9WEVGEMMVRZ"),
            ),
            1_800_000_000_000,
            64 * 1024,
        )
        .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        assert_eq!(
            body,
            json!({"name":"sensor.temp","device_id":"01ARZ3NDEKTSV4RRFFQ69G5FAV",
                   "occurred_at_unix_ms":1_800_000_000_000u64,"payload":{"c":21.5},
                   "to":"01BX5ZZKBKACTAV9WEVGEMMVRZ"})
        );
        assert_eq!(event.to.as_deref(), Some("01BX5ZZKBKACTAV9WEVGEMMVRZ"));
    }

    #[test]
    fn anonymous_and_oversized_publishes_are_refused() {
        let anonymous = publish(None, publish_of("a", json!(1), None), 0, 1 << 20).unwrap_err();
        assert_eq!(anonymous.code, ErrorCode::Unauthorized);
        let big = publish(
            Some("dev"),
            publish_of("a", json!("x".repeat(1000)), None),
            0,
            1000,
        )
        .unwrap_err();
        assert_eq!(big.code, ErrorCode::FrameTooLarge);
    }

    #[test]
    fn resume_serves_retained_cursors_and_refuses_gaps_and_cursors_ahead() {
        let bounds = LogBounds {
            first_seq: 10,
            last_seq: 20,
        };
        assert_eq!(resume(Some(9), bounds), Resume::After(9));
        assert_eq!(resume(Some(20), bounds), Resume::After(20));
        let Resume::Refused(gap) = resume(None, bounds) else {
            panic!("events 1..9 are gone")
        };
        assert_eq!(
            (gap.error, gap.first_seq),
            (Some(ErrorCode::ResumeGap), Some(10))
        );
        let Resume::Refused(ahead) = resume(Some(21), bounds) else {
            panic!("a cursor ahead of the log")
        };
        assert!(ahead.message.unwrap().contains("ahead of the log"));
        let empty = LogBounds {
            first_seq: 1,
            last_seq: 0,
        };
        assert_eq!(resume(None, empty), Resume::After(0));
    }

    #[test]
    fn devices_see_broadcasts_and_their_own_events_anonymous_readers_broadcasts_only() {
        let broadcast = StoredEvent {
            seq: 1,
            to: None,
            body: bytes::Bytes::new(),
        };
        let addressed = StoredEvent {
            seq: 2,
            to: Some("a".into()),
            body: bytes::Bytes::new(),
        };
        assert!(visible(&broadcast, Some("a")) && visible(&broadcast, None));
        assert!(visible(&addressed, Some("a")));
        assert!(!visible(&addressed, Some("b")) && !visible(&addressed, None));
    }
}
