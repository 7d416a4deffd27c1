//! The load generator: many authenticated connections, open-loop scenarios, latency histograms and reports. It arrives with the loadgen issue; until then it only says so.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    eprintln!("switchboard-loadgen: no scenarios yet");
    std::process::exit(2);
}
