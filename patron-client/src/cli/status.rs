//! `patron-client status`: one torrent's status, read off the board (or asked).

use super::output::summary_json;
use super::{torrent_ref, Context, Exit, Source};
use patron_client::proto::text::{bytes, duration, shown};
use patron_client::proto::{TorrentRef, TorrentState, TorrentSummary};
use patron_client::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Torrent id or info hash
    #[arg(value_name = "ID|INFOHASH", value_parser = torrent_ref)]
    torrent: TorrentRef,
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    let summary = match ctx.status_source()? {
        Source::Board(board) => match board.summary(args.torrent) {
            // A text too long for its slot was cut (and marked `…`): the broker has it whole.
            Some(summary)
                if !maybe_cut(&summary.status) && !summary.info.save_folder.ends_with('…') =>
            {
                summary
            }
            _ => asked(&mut ctx.reader()?, args.torrent)?,
        },
        Source::Requests(mut patron) => asked(&mut patron, args.torrent)?,
    };
    let mut value = summary_json(&summary);
    value["event"] = "status".into();
    ctx.out.emit(|| detail(&summary), value);
    Ok(Exit::Success)
}

/// The torrent as the broker lists it; a torrent it lacks is its `status` error (unknown
/// id, and so on).
fn asked(patron: &mut patron_client::Patron, torrent: TorrentRef) -> Result<TorrentSummary, Error> {
    let status = patron.status(torrent)?;
    patron
        .list()?
        .into_iter()
        .find(|t| t.info.id == status.id)
        .ok_or_else(|| {
            // Closed between the two questions.
            Error::Request(patron_client::proto::ProtoError::unknown_torrent(format!(
                "torrent {} was closed meanwhile",
                status.id
            )))
        })
}

/// One torrent, a line per figure (as `transmission-remote -i` shows one).
fn detail(summary: &TorrentSummary) -> String {
    let status = &summary.status;
    let plural = |n: u32, one: &str, many: &str| match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    };
    let mut lines = vec![
        format!("Torrent {}: {}", status.id, shown(&status.name)),
        format!("  info hash: {}", status.info_hash),
        format!("  state:     {}", status.state.as_str()),
        format!(
            "  done:      {:.2}% ({} of {})",
            status.progress * 100.0,
            bytes(status.bytes_done),
            bytes(status.bytes_total)
        ),
        format!(
            "  rates:     down {}/s, up {}/s",
            bytes(status.download_rate),
            bytes(status.upload_rate)
        ),
        format!(
            "  peers:     {} ({})",
            plural(status.peers, "peer", "peers"),
            plural(status.seeds, "seed", "seeds")
        ),
    ];
    if let Some(eta) = status.eta_secs {
        lines.push(format!("  eta:       {}", duration(eta)));
    }
    lines.push(format!(
        "  moved:     {} up, {} down in all: ratio {:.2}",
        bytes(status.uploaded),
        bytes(status.downloaded),
        status.ratio()
    ));
    if let Some(place) = status.queue_position {
        lines.push(format!("  queue:     #{place}"));
    }
    let limits = &status.seed_limits;
    let mut stops = Vec::new();
    if let Some(ratio) = limits.ratio {
        stops.push(format!("at ratio {ratio:.2}"));
    }
    if let Some(secs) = limits.seed_time_secs {
        stops.push(format!("after {} seeding", duration(secs)));
    }
    if let Some(secs) = limits.idle_secs {
        stops.push(format!("after {} idle", duration(secs)));
    }
    let seeded = duration(status.seeding_secs);
    lines.push(match stops.is_empty() {
        true => format!("  seeding:   {seeded} so far; no limit"),
        false => format!("  seeding:   {seeded} so far; stops {}", stops.join(", ")),
    });
    lines.push(format!("  saved in:  {}", shown(&summary.info.save_folder)));
    // Patrons are programs connected to the broker: a `cat`, an `add --wait`, a script.
    let users = match summary.holders {
        0 => "no program".to_owned(),
        n => plural(n, "program", "programs"),
    };
    lines.push(match summary.ephemeral {
        true => format!("  used by:   {users}; closes when the last lets go (ephemeral)"),
        false => format!("  used by:   {users}; runs until closed"),
    });
    if let TorrentState::Error(why) = &status.state {
        lines.push(format!("  error:     {}", shown(why)));
    }
    lines.join("\n")
}

/// Whether a text of `status` may have been cut to fit its slot on the board (the board
/// marks a cut text with a trailing `…`; a whole one that ends so is only asked again).
pub fn maybe_cut(status: &patron_client::proto::TorrentStatus) -> bool {
    let error = match &status.state {
        patron_client::proto::TorrentState::Error(why) => why.as_str(),
        _ => "",
    };
    status.name.ends_with('…') || error.ends_with('…')
}
