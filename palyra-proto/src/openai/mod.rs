//! OpenAI-compatible chat completions, without IO. As a client of a model provider: [`chat`]
//! decodes the streamed answer and [`call`] is one request as a connection machine (with the
//! retry policy for refusals). As the gateway's own OpenAI-compatible API: [`request`] decodes
//! what callers send and [`answer`] encodes what they get back.

pub mod answer;
pub mod call;
pub mod chat;
pub mod request;
