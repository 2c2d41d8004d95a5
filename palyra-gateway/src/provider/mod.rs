//! The model provider: an OpenAI-compatible chat-completions client. [`chat`] decodes the
//! streamed answer and [`call`] is one request as a connection machine (with the retry policy),
//! both without IO.

pub mod call;
pub mod chat;
