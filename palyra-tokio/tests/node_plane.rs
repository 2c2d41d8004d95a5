//! The shared integration suite on the tokio runtime adapter.

use palyra_gateway::runtime::Rt;
use palyra_testkit::{node_plane_suite, Driver};
use std::future::Future;
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| palyra_tokio::build_runtime(2).expect("runtime"))
}

struct Tokio;

impl Driver for Tokio {
    const NAME: &'static str = "tokio";

    fn runtime() -> Rt {
        palyra_tokio::Tokio::new(runtime().handle().clone())
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        runtime().block_on(future)
    }
}

node_plane_suite!(Tokio);

#[test]
fn offline_certificates_take_effect_at_once() {
    palyra_testkit::offline::offline_certificates_take_effect_at_once::<Tokio>(
        std::path::Path::new(env!("CARGO_BIN_EXE_palyrad")),
    );
}
