//! freezeframe binary entry point: parse the CLI, run, map the outcome to an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    match freezeframe::cli::run() {
        Ok(outcome) => outcome.into(),
        Err(err) => {
            eprintln!("error: {}", freezeframe::k8s::errors::chain(err.as_ref()));
            freezeframe::exit::Outcome::Failed.into()
        }
    }
}
