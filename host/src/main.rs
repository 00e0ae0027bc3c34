//! The `lockd` binary; see [`lockd::cli`].

/// See [`lockd::reserve`]: a client's declared body length must not end
/// the daemon.
#[global_allocator]
static ALLOCATOR: lockd::reserve::Reserving = lockd::reserve::Reserving;

fn main() -> std::process::ExitCode {
    lockd::cli::run()
}
