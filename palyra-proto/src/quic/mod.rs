//! palyra-quic-v1 over quinn-proto + rustls: TLS configuration, the server machine and the client machine.

pub mod client;
pub mod server;
pub mod tls;

pub use client::{ClientEvent, ClientLimits, NodeClient, RequestId, RequestSinks, ResponseItem};
pub use server::{NodeServer, NodeServerConfig, ServerEvent, ServerLimits, StreamKey, Transmit};
pub use tls::ALPN;

/// Most datagrams batched into one segmentation-offload (GSO) send. Larger bursts overflow a
/// receiver's socket buffer, and the resulting losses collapse throughput (quinn uses 10 too).
pub const MAX_TRANSMIT_SEGMENTS: usize = 10;
