//! `manpages`: write patron-client(1) and one page per command (patron-client-add(1), …)
//! into a folder, generated from the clap definitions. `scripts/install` uses it.

use super::{Cli, Exit};
use clap::CommandFactory;
use patron_client::Error;
use std::path::{Path, PathBuf};

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
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    write_pages(&cli, true, &args.dir).map_err(io)?;
    // The broker's page, from the broker itself (its options are its own).
    let broker = broker_page(&args.dir);
    let dir = args.dir.display().to_string();
    ctx.out.emit(
        || match &broker {
            Ok(()) => format!("Man pages written to {dir}"),
            Err(why) => format!("Man pages written to {dir}, but not torrent-broker(1): {why}"),
        },
        serde_json::json!({ "event": "manpages", "dir": dir, "broker_page": broker.is_ok() }),
    );
    Ok(Exit::Success)
}

/// Writes torrent-broker(1), as `torrent-broker --manpage` prints it (the broker named by
/// $TORRENT_PATRON_BROKER, else the one beside this program, else on the PATH).
fn broker_page(dir: &Path) -> Result<(), String> {
    let program = std::env::var_os(patron_client::BROKER_PROGRAM_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.join("torrent-broker")))
                .filter(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("torrent-broker"));
    let out = std::process::Command::new(&program)
        .arg("--manpage")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run {}: {}",
                program.display(),
                patron_client::plain_io_error(&e)
            )
        })?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(format!("{} --manpage printed no page", program.display()));
    }
    std::fs::write(dir.join("torrent-broker.1"), out.stdout)
        .map_err(|e| format!("cannot write it: {}", patron_client::plain_io_error(&e)))
}

/// Writes `cmd`'s page and its subcommands' into `dir`: clap's sections, then the text
/// after the help under the name a man page reader looks for (EXAMPLES, EXIT STATUS,
/// COMMANDS), and on the first page ENVIRONMENT and FILES.
fn write_pages(cmd: &clap::Command, top: bool, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, false, dir)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut page)?;
    }
    if let Some(after) = cmd.get_after_help() {
        let text = after.to_string();
        let (heading, body) = match text.split_once('\n') {
            Some(("Examples:", body)) => ("EXAMPLES", body),
            Some(("Exit codes:", body)) => ("EXIT STATUS", body),
            _ => ("COMMANDS", text.as_str()),
        };
        section(&mut page, heading, body);
    }
    if top {
        section(&mut page, "ENVIRONMENT", ENVIRONMENT);
        section(&mut page, "FILES", FILES);
    }
    section(&mut page, "SEE ALSO", "patron-client(1), torrent-broker(1)");
    if cmd.get_version().is_some() {
        man.render_version_section(&mut page)?;
    }
    std::fs::write(dir.join(man.get_filename()), page)
}

/// A section of preformatted text (kept as written: the examples are lines to copy).
fn section(page: &mut Vec<u8>, heading: &str, body: &str) {
    page.extend_from_slice(format!(".SH \"{heading}\"\n.nf\n").as_bytes());
    for line in body.lines() {
        // Roff reads a leading `.` or `'` as a request and `\` as an escape, and may print
        // `-` as a hyphen that a copied command would not survive.
        let line = line.replace('\\', "\\e").replace('-', "\\-");
        let line = match line.starts_with(['.', '\'']) {
            true => format!("\\&{line}"),
            false => line,
        };
        page.extend_from_slice(line.as_bytes());
        page.push(b'\n');
    }
    page.extend_from_slice(b".fi\n");
}

const ENVIRONMENT: &str = "\
TORRENT_PATRON_STATE    the broker's state directory (as --state-dir; default
                        $XDG_STATE_HOME/torrent-patron, or ~/.local/state/torrent-patron)
TORRENT_PATRON_BROKER   the torrent-broker program to start (default: the one beside
                        patron-client, then the PATH)
TORRENT_PATRON_BOARD    0: ask the broker for status instead of reading its shared board
A broker that a command starts inherits the environment: its own variables
(TORRENT_PATRON_DOWNLOAD_ROOT, TORRENT_PATRON_LOOPBACK_ONLY, ...; see torrent-broker(1))
apply to it and win over <state dir>/broker.toml (its log names each one that does).";

const FILES: &str = "\
<state dir>/broker.toml     the broker's settings, keys as its long options
<state dir>/broker.log      the broker's log (an auto-started broker writes here)
<state dir>/records/        the torrents it restores at its next start, a file each
<state dir>/run/            its socket, where patrons connect";
