//! Connection floods against `palyrad` (tokio) under a 256-descriptor limit.

use std::path::Path;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_palyrad"))
}

#[test]
fn a_connection_flood_leaves_the_daemon_healthy() {
    palyra_testkit::flood::flood("tokio", binary());
}

#[test]
fn accept_errors_back_off_when_descriptors_run_out() {
    palyra_testkit::flood::flood_past_the_descriptor_limit("tokio", binary());
}
