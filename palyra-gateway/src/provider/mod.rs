//! The model provider: an OpenAI-compatible chat-completions client. [`chat`] decodes the
//! streamed answer without IO.

pub mod chat;
