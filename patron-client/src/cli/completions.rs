//! `completions`: a shell completion script for bash, zsh, fish, elvish or PowerShell,
//! generated from the same clap definitions that parse the arguments, so it never drifts.

use super::{Cli, Exit};
use clap::CommandFactory;
use clap_complete::Shell;
use patron_client::Error;
use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for
    shell: Shell,
}

pub fn run(args: Args) -> Result<Exit, Error> {
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, &name, &mut script);
    if args.shell == Shell::Bash {
        script = mend_bash_hyphenated_name(&String::from_utf8_lossy(&script), &name).into_bytes();
    }
    std::io::stdout()
        .write_all(&script)
        .map_err(|source| Error::Io {
            context: "cannot write the completion script".into(),
            source,
        })?;
    Ok(Exit::Success)
}

/// clap_complete's bash script spells the states of a hyphenated program's subcommands two
/// ways (`patron__client__subcmd__add` where it sets them, `patron__subcmd__client__subcmd__add`
/// where it matches them), so options after a subcommand never complete
/// (clap-rs/clap#6421, open in clap_complete 4.6.11). Respell the second as the first.
fn mend_bash_hyphenated_name(script: &str, name: &str) -> String {
    let wrong = name.replace('-', "__subcmd__");
    let right = name.replace('-', "__");
    script.replace(&wrong, &right)
}
