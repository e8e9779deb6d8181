//! `manpages`: write patron-client(1) and one page per command (patron-client-add(1), …)
//! into a folder, generated from the clap definitions. `scripts/install` uses it.

use super::{Cli, Exit};
use clap::CommandFactory;
use patron_client::Error;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder to write the pages into (e.g. ~/.local/share/man/man1)
    dir: PathBuf,
}

pub fn run(ctx: &super::Context, args: Args) -> Result<Exit, Error> {
    let io = |source| Error::Io {
        context: format!("cannot write man pages into {}", args.dir.display()),
        source,
    };
    std::fs::create_dir_all(&args.dir).map_err(io)?;
    clap_mangen::generate_to(Cli::command(), &args.dir).map_err(io)?;
    let dir = args.dir.display().to_string();
    ctx.out.emit(
        || format!("Man pages written to {dir}"),
        serde_json::json!({ "event": "manpages", "dir": dir }),
    );
    Ok(Exit::Success)
}
