//! The model provider: an OpenAI-compatible chat-completions client over any runtime
//! ([`client`]); the protocol itself is `palyra_proto::openai`.

pub mod client;
