//! The `switchboard` binary: it will run the gateway shards, the mesh and the control plane. Until the messaging core lands it only says so.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    eprintln!("switchboard: the server is not built yet");
    std::process::exit(2);
}
