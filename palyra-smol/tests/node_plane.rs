//! The shared integration suite on the smol runtime adapter.

use palyra_gateway::runtime::Rt;
use palyra_testkit::{node_plane_suite, Driver};
use std::future::Future;

struct Smol;

impl Driver for Smol {
    const NAME: &'static str = "smol";

    fn runtime() -> Rt {
        palyra_smol::Smol::new()
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        smol::block_on(future)
    }
}

node_plane_suite!(Smol);

#[test]
fn offline_certificates_take_effect_at_once() {
    palyra_testkit::offline::offline_certificates_take_effect_at_once::<Smol>(
        std::path::Path::new(env!("CARGO_BIN_EXE_palyrad-smol")),
    );
}
