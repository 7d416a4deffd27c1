//! `switchboard config default` and `switchboard config check FILE`: the configuration's
//! reference, printed from the one declaration of every setting, and a dry run of a file.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{self, ConfigCommand};

/// `config check`: the file could not be read (no such file, no permission).
const EXIT_UNREADABLE: u8 = 1;
/// `config check`: the file was read but is not a valid configuration.
const EXIT_INVALID: u8 = 2;

pub fn run(command: &ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Default => {
            print!("{}", config::default_toml());
            ExitCode::SUCCESS
        }
        ConfigCommand::Check(args) => check(&args.file),
    }
}

/// Prints `ok` on stdout, or one error line on stderr; the exit status tells which, and
/// whether the file could be read at all.
fn check(path: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            eprintln!(
                "switchboard: error: cannot read config file {}: {error}",
                path.display()
            );
            return ExitCode::from(EXIT_UNREADABLE);
        }
    };
    match config::check_file(path, &text) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("switchboard: error: {error:#}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}
