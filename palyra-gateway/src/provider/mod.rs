//! The model provider: an OpenAI-compatible chat-completions client. [`chat`] decodes the
//! streamed answer and [`call`] is one request as a connection machine (with the retry policy),
//! both without IO; [`client`] runs them over any runtime.

pub mod call;
pub mod chat;
pub mod client;
