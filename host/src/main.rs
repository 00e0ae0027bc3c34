//! The `lockd` binary; see [`lockd::cli`].

fn main() -> std::process::ExitCode {
    lockd::cli::run()
}
