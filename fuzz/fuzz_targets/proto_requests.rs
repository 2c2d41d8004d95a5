//! prost decoding of every request message we serve never panics, and whatever decodes
//! re-encodes to something that decodes to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::pb::grpc::health::v1::HealthCheckRequest;
use palyra_proto::pb::grpc::reflection::v1::ServerReflectionRequest;
use palyra_proto::pb::palyra::gateway::v1::HealthRequest;
use palyra_proto::pb::palyra::node::v1::*;
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(message) = M::decode(data) {
        let again = M::decode(message.encode_to_vec().as_slice()).expect("own encoding decodes");
        assert_eq!(again, message);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    match which % 14 {
        0 => round_trip::<HealthRequest>(data),
        1 => round_trip::<HealthCheckRequest>(data),
        2 => round_trip::<ServerReflectionRequest>(data),
        3 => round_trip::<BeginPairingSessionRequest>(data),
        4 => round_trip::<CompletePairingSessionRequest>(data),
        5 => round_trip::<GetPairingRequestStatusRequest>(data),
        6 => round_trip::<RotateDeviceCertificateRequest>(data),
        7 => round_trip::<RevokeDevicePairingRequest>(data),
        8 => round_trip::<RegisterNodeRequest>(data),
        9 => round_trip::<NodeEventRequest>(data),
        10 => round_trip::<ExecuteCapabilityRequest>(data),
        11 => round_trip::<NodeEventResponse>(data),
        12 => round_trip::<CompletePairingSessionResponse>(data),
        _ => round_trip::<GetPairingRequestStatusResponse>(data),
    }
});
