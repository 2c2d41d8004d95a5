//! OpenAI-compatible chat completions, without IO: [`chat`] decodes the streamed answer and
//! [`call`] is one request as a connection machine (with the retry policy for refusals).

pub mod call;
pub mod chat;
