//! Argument parsing, exit codes and dispatch. Each command lives in a module of its own.

/// `println!` for the command's stdout that never panics: a reader that left (`| head`) ends
/// the command quietly with exit 0, any other write error with a message and exit 1.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::print_line(format_args!($($arg)*))
    };
}

mod add;
mod broker;
mod cat;
mod close;
mod completions;
mod files;
mod labels;
mod limits;
mod list;
mod make;
mod manpages;
mod move_storage;
mod output;
mod pause;
mod peers;
mod pipe;
mod queue;
mod recheck;
mod resume;
mod set;
mod status;
mod watch;
mod web;

use clap::{Parser, Subcommand};
use output::Output;
use patron_client::{Board, ConnectOptions, Error, Patron};
use std::path::PathBuf;
use std::process::ExitCode;

const EXAMPLES_ADD: &str = "Examples:\n  patron-client add film.torrent -o ~/Videos --wait
  patron-client add 'magnet:?xt=urn:btih:...' --peer 192.168.1.5:6881
  patron-client --json add film.torrent --paused --only 0,2";

const EXAMPLES_CLOSE: &str = "Examples:\n  patron-client close 3
  patron-client close 3 --delete-data --force";

const EXAMPLES_LIST: &str = "Examples:\n  patron-client list
  patron-client --json list | jq -r '.name' ";

const EXAMPLES_STATUS: &str = "Examples:\n  patron-client status 3
  patron-client --json status 3 | jq .progress";

const EXAMPLES_WATCH: &str =
    "Examples:\n  patron-client watch          # every torrent, those added later too, until Ctrl-C
  patron-client watch 3 5      # these two, until both are closed";

const EXAMPLES_PAUSE: &str = "Examples:\n  patron-client pause 3";

const EXAMPLES_RESUME: &str = "Examples:\n  patron-client resume 3";

const EXAMPLES_RECHECK: &str = "Examples:\n  patron-client recheck 3 && patron-client watch 3";

const EXAMPLES_MOVE: &str = "Examples:\n  patron-client move 3 /srv/media/done
  patron-client move 3 /mnt/usb/torrents     # another disk: copied, synced, verified, then the old files go";

const EXAMPLES_LABEL: &str = "Examples:\n  patron-client label 3 films 4k
  patron-client label 3 --clear";

const EXAMPLES_LABELS: &str = "Examples:\n  patron-client labels
  patron-client labels films --folder /srv/films --ratio 2 --max-upload-rate 1M
  patron-client add film.torrent --label films      # saved in /srv/films, seeds to ratio 2
  patron-client list --label films";

const EXAMPLES_FILES: &str = "Examples:\n  patron-client files 3
  patron-client files 3 --only 0,2";

const EXAMPLES_PEERS: &str = "Examples:\n  patron-client peers 3
  patron-client peers 3 --add 192.168.1.5:6881 --add seedbox:51413";

const EXAMPLES_CAT: &str = "Examples:\n  patron-client cat 3 | mpv -
  patron-client cat 3 \"Film/film.mkv\" --offset 1.5G | mpv -";

const EXAMPLES_MAKE: &str = "Examples:\n  patron-client make ~/Photos --seed
  patron-client make big.iso --piece-size 4M --tracker http://tracker.example/announce";

const EXAMPLES_LIMITS: &str = "Examples:\n  patron-client limits
  patron-client limits --down 2M --up 512K
  patron-client limits --down none
  patron-client limits 3 --up 100K          # torrent 3's own, while it runs";

const EXAMPLES_QUEUE: &str = "Examples:\n  patron-client queue
  patron-client queue --downloads 3 --seeds 5       # the others wait, queued
  patron-client queue --downloads none --stalled-after 2h
  patron-client queue 7 top                         # torrent 7 starts next";

const EXAMPLES_SET: &str = "Examples:\n  patron-client set                                  # the broker's, for all torrents
  patron-client set --ratio 2 --seed-time 3d --action pause
  patron-client set 3 --ratio none --max-upload-rate 100K   # torrent 3's own
  patron-client set 3 --ratio default                       # the broker's again";

const EXAMPLES_BROKER: &str = "Examples:\n  patron-client broker status
  patron-client broker stop";

const EXAMPLES_WEB: &str = "\
Examples:
  patron-client web --listen 127.0.0.1:9091     # prints http://127.0.0.1:9091/#token=...
  curl -u any:TOKEN http://127.0.0.1:9091/api/torrents
  mpv http://any:TOKEN@127.0.0.1:9091/files/3/0
  patron-client web                             # a unix socket: curl --unix-socket";

const PIPE_COMMANDS: &str = "\
Commands, one JSON object per line (\"cmd\", plus an optional \"request\" echoed in the reply):
  add       exactly one of torrent (a path), torrent_base64, magnet; output, peers, paused,
            only, max_download_rate, max_upload_rate, ephemeral, overwrite,
            ratio_limit, seed_time_limit_secs, idle_seed_limit_secs,
            move_completed_to, labels                                      -> created
  close     torrent; delete_data, force                                    -> closed
  list                                                                     -> list
  status    torrent                                                        -> status
  follow    torrent (its status updates follow)                            -> following
  make      path; output, piece_size, trackers, seed                       -> made
  info                                                                     -> broker
  limits    torrent (its own; else all), max_download_rate, max_upload_rate
            (0 lifts one; neither: ask)                                    -> limits
  queue     max_active_downloads, max_active_seeds (a number or \"none\"),
            stalled_after_secs (or \"never\"); none of them: ask            -> queue
  queue-move  torrent, to (top, up, down, bottom)                          -> status
  seeding   torrent (its own; else the broker's), ratio_limit, seed_time_limit_secs,
            idle_seed_limit_secs (a number, \"none\", or for a torrent \"default\"),
            seed_limit_action (pause, close); none of them: ask            -> seeding
  pause, resume, recheck    torrent                                        -> status
  move      torrent, to (a folder inside the roots)                        -> status
  label     torrent, labels (a list; empty: none)                          -> status
  labels    name (else: only list), folder, max_download_rate,
            max_upload_rate, ratio_limit, seed_time_limit_secs,
            idle_seed_limit_secs (a value, \"none\", or \"default\"), remove  -> labels
  files     torrent; only                                                  -> files
  peers     torrent; add                                                   -> peers
  cat       torrent, to (a FIFO or a new file); file, offset               -> cat-done
  shutdown  (or EOF): wait for what is due, then                           -> finished
A torrent is its id (3 or \"3\") or its info hash. Any reply may instead be
{\"event\":\"error\",\"kind\":...,\"message\":...}.

Example:
  echo '{\"cmd\":\"list\"}' | patron-client pipe";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the request failed (unknown torrent, I/O error, torrent error...)
  2  usage error
  3  the torrent could not be started: a folder outside the roots, a bad .torrent... (reason on stderr)
  4  the torrent was already downloading (this patron joined it)
  5  broker unreachable: none runs and none could be started, it refused us, or it stopped
  6  cat: the stream ended before the file did (its torrent failed, was closed, rechecked or moved)";

/// Download, seed and stream torrents from a terminal or a script.
///
/// Every command talks to the one torrent-broker of a state directory: the only BitTorrent
/// client there, shared by every program that uses it. A command that changes something
/// starts the broker when none runs; commands that only read never do.
#[derive(Debug, Parser)]
#[command(name = "patron-client", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// State directory of the broker to use [env: TORRENT_PATRON_STATE]
    // Read from the environment by the library, not by clap: clap would show the option
    // as given (in every usage line) whenever the variable is set.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// One JSON object per reply on stdout (JSON Lines for streams)
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a torrent from a .torrent file or a magnet link (or join it if it runs)
    #[command(after_help = EXAMPLES_ADD)]
    Add(add::Args),
    /// Stop and remove a torrent from the broker (unless other programs use it); its data
    /// stays unless --delete-data
    #[command(after_help = EXAMPLES_CLOSE, visible_aliases = ["remove", "rm"])]
    Close(close::Args),
    /// List every torrent the broker runs
    #[command(after_help = EXAMPLES_LIST)]
    List(list::Args),
    /// Show one torrent's status
    #[command(after_help = EXAMPLES_STATUS, visible_alias = "info")]
    Status(status::Args),
    /// Print status updates of torrents (with none named: every torrent, later ones too)
    #[command(after_help = EXAMPLES_WATCH)]
    Watch(watch::Args),
    /// Pause a torrent (it stays paused across broker restarts)
    #[command(after_help = EXAMPLES_PAUSE, visible_alias = "stop")]
    Pause(pause::Args),
    /// Resume a paused torrent
    #[command(after_help = EXAMPLES_RESUME, visible_alias = "start")]
    Resume(resume::Args),
    /// Verify a torrent's data on disk again, every piece
    #[command(after_help = EXAMPLES_RECHECK)]
    Recheck(recheck::Args),
    /// Move a torrent's data to another folder (renamed, or copied and verified across
    /// disks) and run it from there
    #[command(after_help = EXAMPLES_MOVE, name = "move", visible_alias = "mv")]
    Move(move_storage::Args),
    /// Give a torrent its labels (replacing those it has)
    #[command(after_help = EXAMPLES_LABEL)]
    Label(labels::LabelArgs),
    /// Show every label, or change what one carries for its torrents: a save folder, rate
    /// and seeding limits (kept across restarts)
    #[command(after_help = EXAMPLES_LABELS)]
    Labels(labels::LabelsArgs),
    /// List a torrent's files; --only chooses which to download
    #[command(after_help = EXAMPLES_FILES)]
    Files(files::Args),
    /// List a torrent's peers; --add dials more
    #[command(after_help = EXAMPLES_PEERS)]
    Peers(peers::Args),
    /// Write one file of a torrent to stdout, in order, while it downloads
    #[command(after_help = EXAMPLES_CAT)]
    Cat(cat::Args),
    /// Make a .torrent from a file or folder (and seed it with --seed)
    #[command(after_help = EXAMPLES_MAKE)]
    Make(make::Args),
    /// Show or change the rate limits for all torrents, or one torrent's (kept across restarts)
    #[command(after_help = EXAMPLES_LIMITS)]
    Limits(limits::Args),
    /// Show or change when torrents stop seeding and their rate limits, all torrents' or one's (kept across restarts)
    #[command(after_help = EXAMPLES_SET)]
    Set(set::Args),
    /// Show or change how many torrents run at once, or move one in the queue (kept across restarts)
    #[command(after_help = EXAMPLES_QUEUE)]
    Queue(queue::Args),
    /// Start, stop or query the broker
    #[command(after_help = EXAMPLES_BROKER)]
    Broker(broker::Args),
    /// Print a shell completion script (e.g. `source <(patron-client completions bash)`)
    Completions(completions::Args),
    /// Write man pages (patron-client(1) and one per command) into a folder
    Manpages(manpages::Args),
    /// Be one patron driven by JSON Lines: commands on stdin, replies and status on stdout
    #[command(after_help = PIPE_COMMANDS)]
    Pipe,
    /// Serve a web page, HTTP streaming and Transmission's RPC (runs torrent-web)
    #[command(after_help = EXAMPLES_WEB)]
    Web(web::Args),
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    Failure = 1,
    Usage = 2,
    StartFailed = 3,
    AlreadyDownloading = 4,
    Unreachable = 5,
    StreamEnded = 6,
}

impl Exit {
    /// The exit code for an error.
    pub fn of(error: &Error) -> Exit {
        match error {
            Error::BrokerUnreachable(_)
            | Error::TimedOut(_)
            | Error::Refused { .. }
            | Error::BrokerStopped(_) => Exit::Unreachable,
            Error::StartFailed(_) => Exit::StartFailed,
            Error::StreamEnded(_) => Exit::StreamEnded,
            Error::Request(_) | Error::Protocol(_) | Error::Io { .. } => Exit::Failure,
        }
    }
}

/// What every command gets.
pub struct Context {
    pub out: Output,
    pub connect: ConnectOptions,
}

impl Context {
    /// A patron for a command that changes something: a broker is started if none runs.
    pub fn patron(&self) -> Result<Patron, Error> {
        Patron::connect_with(&self.connect)
    }

    /// A patron for a command that changes a torrent already added (`close`, `pause`,
    /// `files --only`...): a broker is started if none runs and the state dir records
    /// torrents to restore (the one named may be among them); with none recorded, no torrent
    /// can be there to change, and no broker is started to say so (exit 5, as `reader`).
    pub fn patron_for_torrent(&self) -> Result<Patron, Error> {
        Patron::connect_with(&self.for_torrent()).map_err(|e| none_runs(e, &self.command_line()))
    }

    /// How to reach the broker for a command about a torrent already added (`cat` too):
    /// starting it only where torrents are recorded (see [`Context::patron_for_torrent`]).
    pub fn for_torrent(&self) -> ConnectOptions {
        let state =
            patron_client::proto::paths::resolve_state_dir(self.connect.state_dir.as_deref());
        let recorded = state.join("torrents.json").is_file()
            || std::fs::read_dir(state.join("records")).is_ok_and(|mut d| d.next().is_some());
        match recorded {
            true => self.connect.clone(),
            false => self.reading(),
        }
    }

    /// A patron for a command that only reads (`list`, `status`, `watch`, `files` and
    /// `peers` without changes, `broker status`): it never starts a broker nor makes a
    /// folder. None running is exit 5, saying how to start one.
    pub fn reader(&self) -> Result<Patron, Error> {
        Patron::connect_with(&self.reading()).map_err(|e| none_runs(e, &self.command_line()))
    }

    /// How to name this state directory's broker in advice: `patron-client`, with its
    /// `--state-dir` when one was given (advice copied as written must reach the same
    /// broker).
    pub fn command_line(&self) -> String {
        match &self.connect.state_dir {
            Some(dir) => format!(
                "patron-client --state-dir {}",
                shell_word(&dir.display().to_string())
            ),
            None => "patron-client".to_owned(),
        }
    }

    fn reading(&self) -> ConnectOptions {
        ConnectOptions {
            auto_start: false,
            ..self.connect.clone()
        }
    }

    /// Where `status`, `list` and `watch` read: the broker's shared board when it can be
    /// mapped (no handshake needed), else a connected patron that asks. Reading starts no
    /// broker (see [`Context::reader`]).
    pub fn status_source(&self) -> Result<Source, Error> {
        if let Ok(board) = Board::open(&self.reading()) {
            return Ok(Source::Board(board));
        }
        let patron = self.reader()?;
        Ok(match patron.board() {
            Ok(board) => Source::Board(board),
            Err(_) => Source::Requests(patron),
        })
    }
}

/// A broker that does not run, said with what to do about it (`client`: how to name it).
fn none_runs(error: Error, client: &str) -> Error {
    match error {
        Error::BrokerUnreachable(why) if why.starts_with("no broker runs") => {
            Error::BrokerUnreachable(format!(
                "{why}: `{client} broker start` starts one (so does any command that adds a torrent)"
            ))
        }
        other => other,
    }
}

/// `word` as a shell reads it back: as it is when it is plain, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    match plain {
        true => word.to_owned(),
        false => format!("'{}'", word.replace('\'', "'\\''")),
    }
}

/// See [`Context::status_source`].
pub enum Source {
    /// Read in shared memory.
    Board(Board),
    /// Asked of the broker.
    Requests(Patron),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    let ctx = Context {
        out: Output::new(cli.json),
        connect: ConnectOptions {
            state_dir: cli.state_dir,
            ..ConnectOptions::default()
        },
    };
    let result = match cli.command {
        Command::Add(args) => add::run(&ctx, args),
        Command::Close(args) => close::run(&ctx, args),
        Command::List(args) => list::run(&ctx, args),
        Command::Status(args) => status::run(&ctx, args),
        Command::Watch(args) => watch::run(&ctx, args),
        Command::Pause(args) => pause::run(&ctx, args),
        Command::Resume(args) => resume::run(&ctx, args),
        Command::Recheck(args) => recheck::run(&ctx, args),
        Command::Move(args) => move_storage::run(&ctx, args),
        Command::Label(args) => labels::label(&ctx, args),
        Command::Labels(args) => labels::labels(&ctx, args),
        Command::Limits(args) => limits::run(&ctx, args),
        Command::Queue(args) => queue::run(&ctx, args),
        Command::Set(args) => set::run(&ctx, args),
        Command::Files(args) => files::run(&ctx, args),
        Command::Peers(args) => peers::run(&ctx, args),
        Command::Cat(args) => cat::run(&ctx, args),
        Command::Make(args) => make::run(&ctx, args),
        Command::Broker(args) => broker::run(&ctx, args),
        Command::Completions(args) => completions::run(args),
        Command::Manpages(args) => manpages::run(&ctx, args),
        Command::Pipe => pipe::run(&ctx),
        Command::Web(args) => web::run(&ctx, args),
    };
    let exit = match result {
        Ok(exit) => exit,
        Err(error) => {
            ctx.out.error(&error);
            Exit::of(&error)
        }
    };
    ExitCode::from(exit as u8)
}

/// A command line clap refused: as text (clap's own, exit 2), or under `--json` as the one
/// JSON error line every other refusal is. Help and version are printed as asked.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let json = std::env::args_os().skip(1).any(|arg| arg == "--json");
    let shown = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !json || shown {
        error.exit();
    }
    let text = error.render().to_string();
    let message = text
        .trim()
        .strip_prefix("error: ")
        .unwrap_or(text.trim())
        .to_owned();
    out!(
        "{}",
        serde_json::json!({"event": "error", "kind": "usage", "message": message})
    );
    ExitCode::from(2)
}

/// `path` made absolute against the current folder (the broker has its own).
/// `..` is taken as the shell takes it (`-o ../other` from a folder is its sibling): the
/// broker refuses a path with `..` in it, never guessing what it means.
pub fn absolute(path: &std::path::Path) -> Result<PathBuf, Error> {
    use std::path::Component;
    let absolute = std::path::absolute(path).map_err(|source| Error::Io {
        context: format!("cannot resolve {}", path.display()),
        source,
    })?;
    let mut resolved = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::CurDir => {}
            other => resolved.push(other),
        }
    }
    Ok(resolved)
}

/// Files as `--only` takes them: indices or paths.
#[derive(Debug, Clone)]
pub struct FileRefs(pub Vec<patron_client::proto::FileRef>);

/// Parses a list of files, each an index as `files` shows it, a range of them (`0-3`), or
/// a path inside the torrent: `0,2,5`, `0-3,7` or `sub/a.mkv,3` (spaces around commas
/// allowed; `./5` is the file whose path is `5`).
pub fn file_list(s: &str) -> Result<FileRefs, String> {
    use patron_client::proto::{bounded::MAX_FILES_NAMED, FileRef};
    let too_many =
        || format!("{s:?} names more than {MAX_FILES_NAMED} files, more than a torrent may have");
    let mut files = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for part in s.split(',').map(str::trim) {
        let range = part
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
        let named: Box<dyn Iterator<Item = FileRef>> = match (part, range) {
            ("", _) => {
                return Err(format!(
                    "{s:?} names an empty file (a list looks like 0,2,5 or 0-3 or sub/a.mkv)"
                ))
            }
            (_, Some((first, last))) if first > last => {
                return Err(format!(
                    "{part:?} is not a range of files (first-last, first ≤ last)"
                ))
            }
            (_, Some((first, last))) if (last - first) as usize >= MAX_FILES_NAMED => {
                return Err(too_many())
            }
            (_, Some((first, last))) => Box::new((first..=last).map(FileRef::Index)),
            (part, None) => Box::new(std::iter::once(cat::file_ref(part))),
        };
        // Each file once, in the order first named.
        for file in named {
            if seen.insert(file.clone()) {
                if files.len() == MAX_FILES_NAMED {
                    return Err(too_many());
                }
                files.push(file);
            }
        }
    }
    Ok(FileRefs(files))
}

/// Parses a rate in bytes per second: `500000`, `512K`, `10M`, `1G` (powers of 1024).
pub fn rate(s: &str) -> Result<u64, String> {
    let value = bytes(s).ok_or_else(|| format!("{s:?} is not a rate (try 500000, 512K or 10M)"))?;
    if value == 0 {
        return Err(
            "a rate limit must be at least 1 byte per second (leave it out for none)".into(),
        );
    }
    Ok(value)
}

/// A peer as users type it: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`. A name is looked up
/// here (as `ping` would: the broker takes addresses); what is neither goes to the broker
/// as typed, which says what is wrong with it (`invalid-peer`).
pub fn peer(s: &str) -> Result<String, String> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr.to_string());
    }
    let resolved = s.rsplit_once(':').and_then(|(host, port)| {
        let port: u16 = port.parse().ok()?;
        let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().ok()?.collect();
        // An IPv4 address first: a broker listening on 0.0.0.0 or 127.0.0.1 takes it.
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
    });
    Ok(resolved.map_or_else(|| s.to_owned(), |addr| addr.to_string()))
}

/// A byte count as users type it: the one parser (`proto::text::parse_bytes`), which the
/// broker's options use too.
pub fn bytes(s: &str) -> Option<u64> {
    patron_client::proto::text::parse_bytes(s)
}

/// Parses a torrent reference as users type it.
pub fn torrent_ref(s: &str) -> Result<patron_client::proto::TorrentRef, String> {
    patron_client::proto::TorrentRef::parse(s)
        .ok_or_else(|| format!("{s:?} is neither a torrent id nor a 40-digit info hash"))
}

#[cfg(test)]
mod tests {
    use super::{bytes, peer};

    #[test]
    fn sizes_read_alike_everywhere() {
        assert_eq!(bytes("65536"), Some(65536));
        assert_eq!(bytes("64K"), Some(65536));
        assert_eq!(bytes("64 KiB"), Some(65536));
        assert_eq!(bytes("1.5M"), Some(1_572_864));
        assert_eq!(bytes("0.5k"), Some(512));
        assert_eq!(bytes(".5G"), Some(1 << 29));
        assert_eq!(bytes("1.3M"), Some(1_363_148)); // rounded down to the byte
        assert_eq!(bytes("2T"), Some(2 << 40));
        for bad in [
            "",
            ".",
            "1.5",
            "1..5M",
            "1.5.5M",
            "-1",
            "1Q",
            "M",
            "99999999999999999999",
        ] {
            assert_eq!(bytes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn peers_are_addresses_or_names() {
        assert_eq!(peer("127.0.0.1:6881").as_deref(), Ok("127.0.0.1:6881"));
        assert_eq!(peer("[::1]:6881").as_deref(), Ok("[::1]:6881"));
        assert_eq!(peer("localhost:6881").as_deref(), Ok("127.0.0.1:6881"));
        // Neither: as typed, for the broker to say what is wrong with it.
        assert_eq!(peer("nonsense").as_deref(), Ok("nonsense"));
        assert_eq!(peer("localhost:99999").as_deref(), Ok("localhost:99999"));
    }
}
