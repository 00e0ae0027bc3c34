//! Attacks on lockd's memory and on everyone else's answers, each timing
//! fresh clients while it lasts. A test binary of their own: cargo runs
//! test binaries one after another, so nothing of the rest of the suite
//! shares the cores with them, and each measures its own attack.

mod memory;
#[allow(dead_code)]
#[path = "../integration/support.rs"]
mod support;
