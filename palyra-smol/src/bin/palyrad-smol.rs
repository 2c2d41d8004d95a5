//! `palyrad-smol`: the Palyra gateway daemon on smol (the same daemon, flags and state
//! directory as `palyrad`).

use palyra_gateway::palyrad;

fn main() -> std::process::ExitCode {
    palyrad::main(|config| smol::block_on(palyrad::serve(palyra_smol::Smol::new(), config)))
}
