//! `allot-reaper NAME`: the task reaper of one agent work directory (see `allot_agent::reaper`). Started by
//! the agent; not meant to be run by hand.
fn main() {
    let Some(name) = std::env::args().nth(1) else {
        eprintln!("usage: allot-reaper NAME (started by allot-agent)");
        std::process::exit(64);
    };
    if let Err(e) = allot_agent::reaper::serve(&name) {
        eprintln!("allot-reaper {name}: {e}");
        std::process::exit(1);
    }
}
