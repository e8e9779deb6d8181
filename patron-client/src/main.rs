//! `patron-client`: the scripting interface to a torrent-broker. See `cli` for the commands.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
