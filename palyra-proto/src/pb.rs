//! Generated protobuf types of `proto/` (prost), and the descriptor set for reflection.

#![allow(missing_docs, clippy::all)]

/// Palyra contracts.
pub mod palyra {
    /// palyra.common.v1
    pub mod common {
        /// v1
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/palyra.common.v1.rs"));
        }
    }
    /// palyra.gateway.v1
    pub mod gateway {
        /// v1
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/palyra.gateway.v1.rs"));
        }
    }
    /// palyra.node.v1
    pub mod node {
        /// v1
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/palyra.node.v1.rs"));
        }
    }
    /// palyra.browser.v1
    pub mod browser {
        /// v1
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/palyra.browser.v1.rs"));
        }
    }
}

/// Standard gRPC services.
pub mod grpc {
    /// grpc.health.v1
    pub mod health {
        /// v1
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
        }
    }
    /// grpc.reflection.v1
    pub mod reflection {
        /// v1
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/grpc.reflection.v1.rs"));
        }
        /// grpc.reflection.v1alpha (wire-identical to v1; only its descriptor is used)
        pub mod v1alpha {
            include!(concat!(env!("OUT_DIR"), "/grpc.reflection.v1alpha.rs"));
        }
    }
}

/// The encoded `FileDescriptorSet` of every compiled file (for server reflection).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

#[cfg(test)]
mod tests {
    use super::palyra::common::v1::CanonicalId;
    use super::palyra::node::v1::{NodeCapabilityDispatch, NodeEventResponse};
    use prost::Message;

    #[test]
    fn field_numbers_are_the_originals() {
        // dispatch is field 13 (after the reserved 5..12 window): tag (13 << 3) | 2 = 0x6a.
        let msg = NodeEventResponse {
            v: 1,
            event_id: Some(CanonicalId {
                ulid: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            }),
            accepted: true,
            reason: String::new(),
            dispatch: Some(NodeCapabilityDispatch {
                capability: "x".into(),
                ..Default::default()
            }),
        };
        let bytes = msg.encode_to_vec();
        assert_eq!(bytes[0], 0x08); // v: field 1, varint
        assert!(bytes.windows(1).any(|w| w[0] == 0x6a));
        assert_eq!(NodeEventResponse::decode(bytes.as_slice()).unwrap(), msg);
    }

    /// The number of field `field` of message `message` (a full name) in the descriptor set.
    fn field_number(message: &str, field: &str) -> Option<i32> {
        let set = prost_types::FileDescriptorSet::decode(super::DESCRIPTOR_SET).unwrap();
        fn find<'a>(
            prefix: &str,
            messages: &'a [prost_types::DescriptorProto],
            name: &str,
        ) -> Option<&'a prost_types::DescriptorProto> {
            messages.iter().find_map(|m| {
                let full = format!("{prefix}.{}", m.name());
                match full == name {
                    true => Some(m),
                    false => find(&full, &m.nested_type, name),
                }
            })
        }
        set.file.iter().find_map(|f| {
            let m = find(f.package(), &f.message_type, message)?;
            m.field
                .iter()
                .find(|x| x.name() == field)
                .map(|x| x.number())
        })
    }

    #[test]
    fn run_contract_numbers_are_the_originals_and_extensions_follow_the_holes() {
        for (message, field, number) in [
            ("palyra.common.v1.RunStreamRequest", "input", 4),
            (
                "palyra.common.v1.RunStreamRequest",
                "tool_approval_response",
                10,
            ),
            ("palyra.common.v1.RunStreamRequest", "queued_input_id", 14),
            ("palyra.common.v1.RunStreamRequest", "attach", 17),
            ("palyra.common.v1.RunStreamRequest", "attach_after_seq", 18),
            ("palyra.common.v1.RunStreamEvent", "model_token", 3),
            ("palyra.common.v1.RunStreamEvent", "status", 7),
            (
                "palyra.common.v1.RunStreamEvent",
                "tool_approval_response",
                12,
            ),
            ("palyra.common.v1.RunStreamEvent", "seq", 25),
            ("palyra.common.v1.ToolApprovalRequest", "approval_id", 11),
            (
                "palyra.common.v1.ToolApprovalResponse",
                "decision_scope_ttl_ms",
                13,
            ),
            ("palyra.common.v1.ToolAttestation", "executor", 6),
            ("palyra.common.v1.EnvelopeOrigin", "sender_display", 11),
            ("palyra.common.v1.MessageAttachment", "height_px", 14),
            ("palyra.gateway.v1.SessionSummary", "last_run_state", 18),
            ("palyra.gateway.v1.CleanupSessionResponse", "run_count", 6),
            (
                "palyra.gateway.v1.ApprovalRecord",
                "decision_scope_ttl_ms",
                18,
            ),
            ("palyra.gateway.v1.ExportApprovalsResponse", "done", 4),
        ] {
            assert_eq!(
                field_number(message, field),
                Some(number),
                "{message}.{field}"
            );
        }
    }

    #[test]
    fn the_descriptor_set_lists_every_service() {
        let set = prost_types::FileDescriptorSet::decode(super::DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                f.service
                    .iter()
                    .map(move |s| format!("{}.{}", f.package(), s.name()))
            })
            .collect();
        for name in [
            "palyra.gateway.v1.GatewayService",
            "palyra.gateway.v1.ApprovalsService",
            "palyra.node.v1.NodeService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ] {
            assert!(
                services.iter().any(|s| s == name),
                "{name} missing from {services:?}"
            );
        }
    }
}
