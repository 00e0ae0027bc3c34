//! Subcommands that hand out what the binary carries: the lock component
//! and its WIT, shell completions, and manual pages.

use super::{Cli, exit};
use clap::{Args, CommandFactory as _};
use std::path::PathBuf;
use std::process::ExitCode;

/// The interface the component exports, as the binary was built with it.
const WIT: &str = include_str!("../../../wit/lockd.wit");

#[derive(Debug, Args)]
pub struct ComponentArgs {
    /// Where to write the component (`.wasm`), byte for byte the one the
    /// daemon runs.
    #[arg(long)]
    out: PathBuf,
    /// Also write its interface (`lockd.wit`) here.
    #[arg(long)]
    wit: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `lockd.1` and a page per subcommand (`lockd-serve.1`, ...)
    /// into this directory, instead of `lockd.1` to standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn component(args: &ComponentArgs) -> ExitCode {
    let written = std::fs::write(&args.out, crate::COMPONENT_WASM).and_then(|()| match &args.wit {
        Some(wit) => std::fs::write(wit, WIT),
        None => Ok(()),
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockd component: {e}");
            ExitCode::from(exit::SOFTWARE)
        }
    }
}

pub fn completions(args: &CompletionsArgs) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "lockd", &mut script);
    // A closed pipe (`| head`) is the reader's choice, not a failure.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
    ExitCode::SUCCESS
}

pub fn man(args: &ManArgs) -> ExitCode {
    let written = match &args.out {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), dir)),
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map(|()| drop(std::io::Write::write_all(&mut std::io::stdout(), &page)))
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockd man: {e}");
            ExitCode::from(exit::SOFTWARE)
        }
    }
}
