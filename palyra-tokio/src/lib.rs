//! The tokio runtime adapter of the Palyra networking stack: [`Tokio`] implements
//! `palyra_gateway::runtime::Runtime`; the binaries `palyrad` (the daemon) and `palyra` (the
//! CLI) run the gateway's code on it.

pub mod runtime;

pub use runtime::Tokio;

/// Builds the multi-threaded tokio runtime the binaries run on.
pub fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
}
