//! `patron-client files`: a torrent's files; `--only` chooses which to download.

use super::output::{bytes, shown};
use super::{torrent_ref, Context, Exit};
use patron_client::json::file_json;
use patron_client::proto::{FileEntry, TorrentRef};
use patron_client::Error;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Torrent id or info hash
    #[arg(value_name = "ID|INFOHASH", value_parser = torrent_ref)]
    torrent: TorrentRef,
    /// Download only these files from now on (indices or paths as listed: 0,2,5 or sub/a.mkv); kept across restarts
    #[arg(long, value_name = "LIST", value_parser = super::file_list)]
    only: Option<super::FileRefs>,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let list = match args.only {
        Some(only) => ctx
            .patron_for_torrent()?
            .select_files(args.torrent, only.0)?,
        None => ctx.reader()?.files(args.torrent)?,
    };
    let value = json!({
        "event": "files",
        "id": list.torrent.0,
        "files": list.files.iter().map(file_json).collect::<Vec<_>>(),
    });
    ctx.out.emit(|| table(&list.files), value);
    Ok(Exit::Success)
}

/// One line per file: index, selected (`*`), percent done, size, path.
fn table(files: &[FileEntry]) -> String {
    let mut lines = vec![format!(
        "{:>5}  {:3}  {:>5}  {:>10}  path",
        "index", "get", "done", "size"
    )];
    for file in files {
        let done = if file.size == 0 {
            100.0
        } else {
            file.bytes_done as f64 * 100.0 / file.size as f64
        };
        lines.push(format!(
            "{:>5}  {:3}  {:>4.0}%  {:>10}  {}",
            file.index,
            if file.selected { "yes" } else { "no" },
            done,
            bytes(file.size),
            shown(&file.path)
        ));
    }
    lines.join("\n")
}
