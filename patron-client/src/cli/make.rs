//! `patron-client make`: have the broker hash a file or folder into a .torrent.

use super::output::{bytes, made_json};
use super::{Context, Exit};
use patron_client::proto::{ErrorKind, MakeTorrent, ProtoError};
use patron_client::Error;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file or folder to share
    path: PathBuf,
    /// Where to write the .torrent [default: ./<name>.torrent]
    #[arg(long, short, value_name = "FILE.torrent")]
    output: Option<PathBuf>,
    /// Piece size (a power of two, 16K to 64M; K, M suffixes accepted) [default: by size]
    #[arg(long, value_name = "BYTES", value_parser = piece_size)]
    piece_size: Option<u64>,
    /// An announce URL to put in the torrent (repeatable)
    #[arg(long = "tracker", value_name = "URL")]
    trackers: Vec<String>,
    /// Also seed it from the broker
    #[arg(long)]
    seed: bool,
    /// Replace the output file if it exists
    #[arg(long)]
    force: bool,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let io = |context: String| move |source| Error::Io { context, source };
    let path = args
        .path
        .canonicalize()
        .map_err(io(format!("cannot read {}", args.path.display())))?;
    let output = match args.output {
        Some(output) => output,
        None => {
            let name = path.file_name().unwrap_or(path.as_os_str());
            let mut file = name.to_os_string();
            file.push(".torrent");
            PathBuf::from(file)
        }
    };
    // Never overwrite a user's file by surprise: check before the (long) hashing too.
    if output.exists() && !args.force {
        return Err(Error::Request(ProtoError::file_exists(format!(
            "{} already exists: --force replaces it, --output names another file",
            output.display()
        ))));
    }
    let mut patron = ctx.patron()?;
    let seed = args.seed;
    let made = patron
        .make(MakeTorrent {
            path: path.display().to_string(),
            piece_size: args.piece_size,
            trackers: args.trackers,
            seed: args.seed,
        })
        .map_err(|error| match error {
            // A seed refused where an add would be (outside the roots, a file another
            // torrent owns) ends as an add's does: exit 3.
            Error::Request(refusal)
                if seed
                    && matches!(
                        refusal.kind,
                        ErrorKind::PathNotAllowed | ErrorKind::FileOwned | ErrorKind::FileExists
                    ) =>
            {
                Error::StartFailed(refusal)
            }
            other => other,
        })?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    options
        .open(&output)
        .and_then(|mut file| file.write_all(&made.torrent_file))
        .map_err(io(format!("cannot write {}", output.display())))?;
    ctx.out.emit(
        || {
            let mut text = format!(
                "Made {}\n  info hash: {}\n  name:      {}\n  size:      {} in {} of {}",
                output.display(),
                made.info_hash,
                super::output::shown(&made.name),
                bytes(made.total_bytes),
                match made.pieces {
                    1 => "1 piece".to_owned(),
                    n => format!("{n} pieces"),
                },
                bytes(made.piece_size)
            );
            if let Some(seeding) = &made.seeding {
                text.push_str(&format!("\n  seeding as torrent {}", seeding.id));
            }
            text
        },
        {
            let mut value = made_json(&made);
            value["torrent_file"] = output.display().to_string().into();
            value
        },
    );
    Ok(Exit::Success)
}

/// `--piece-size`: bytes, with an optional K or M suffix (`64K`, `4M`).
fn piece_size(s: &str) -> Result<u64, String> {
    super::bytes(s).ok_or_else(|| format!("{s:?} is not a piece size (try 65536, 64K or 4M)"))
}
