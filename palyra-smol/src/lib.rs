//! The smol runtime adapter of the Palyra networking stack: [`Smol`] implements
//! `palyra_gateway::runtime::Runtime` over smol's executor and async-io; the binary
//! `palyrad-smol` runs the same daemon as `palyrad` on it.

pub mod runtime;

pub use runtime::Smol;
