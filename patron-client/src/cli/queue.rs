//! `patron-client queue`: how many torrents download and seed at once (the others wait,
//! queued, in order), shown or changed now and kept across restarts; or a torrent moved in
//! that order.

use super::output::{changed_human, status_json};
use super::{Context, Exit};
use patron_client::json::queue_json;
use patron_client::proto::{text, QueueMove, QueueSettings, SetQueue, TorrentRef};
use patron_client::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A torrent (id or info hash) to move in the queue
    #[arg(value_name = "ID|INFOHASH", value_parser = super::torrent_ref, requires = "to")]
    torrent: Option<TorrentRef>,
    /// Where it goes: top, up, down or bottom
    #[arg(value_name = "top|up|down|bottom", value_parser = queue_move)]
    to: Option<QueueMove>,
    /// Most unfinished torrents running at once, or `none`
    #[arg(long, value_name = "N|none", value_parser = count_limit, conflicts_with = "torrent")]
    downloads: Option<Count>,
    /// Most finished torrents seeding at once, or `none`
    #[arg(long, value_name = "N|none", value_parser = count_limit, conflicts_with = "torrent")]
    seeds: Option<Count>,
    /// A running torrent that moved no byte this long stops counting: minutes (30), a
    /// duration (90s, 2h), or `never`
    #[arg(long, value_name = "MINUTES|never", value_parser = stall, conflicts_with = "torrent")]
    stalled_after: Option<StallTime>,
}

/// A count limit as typed (`None`: no limit). (A newtype: clap reads `Option<Option<_>>`
/// as a flag whose value may be left out.)
#[derive(Debug, Clone, Copy)]
struct Count(Option<u32>);

/// A stall time as typed, in seconds (`None`: never).
#[derive(Debug, Clone, Copy)]
struct StallTime(Option<u64>);

fn queue_move(s: &str) -> Result<QueueMove, String> {
    QueueMove::parse(s).ok_or_else(|| format!("{s:?} is not a move: top, up, down or bottom"))
}

fn count_limit(s: &str) -> Result<Count, String> {
    text::parse_count_limit(s)
        .map(Count)
        .ok_or_else(|| format!("{s:?} is not a number of torrents, or none"))
}

fn stall(s: &str) -> Result<StallTime, String> {
    text::parse_time_limit(s).map(StallTime).ok_or_else(|| {
        format!("{s:?} is not a stall time: minutes (30), a duration (90s, 2h), or never")
    })
}

pub fn run(ctx: &Context, args: Args) -> Result<Exit, Error> {
    if let (Some(torrent), Some(to)) = (args.torrent, args.to) {
        let status = ctx.patron_for_torrent()?.move_in_queue(torrent, to)?;
        let place = status
            .queue_position
            .map_or(String::new(), |p| format!(" (#{p} in the queue)"));
        ctx.out.emit(
            || format!("{}{place}", changed_human("Moved", &status)),
            status_json(&status),
        );
        return Ok(Exit::Success);
    }
    let change = SetQueue {
        max_active_downloads: args.downloads.map(|c| c.0),
        max_active_seeds: args.seeds.map(|c| c.0),
        stalled_after_secs: args.stalled_after.map(|s| s.0),
    };
    // Only looking starts no broker; a change does, as any command that changes something.
    let mut patron = match change == SetQueue::default() {
        true => ctx.reader()?,
        false => ctx.patron()?,
    };
    let queue = patron.set_queue(change)?;
    ctx.out.emit(|| human(&queue), queue_json(&queue));
    Ok(Exit::Success)
}

fn human(queue: &QueueSettings) -> String {
    let limit = |n: Option<u32>| match n {
        Some(n) => format!("at most {n} at once"),
        None => "no limit".into(),
    };
    let stall = match queue.stalled_after_secs {
        Some(secs) => format!("after {} without a byte moved", text::duration(secs)),
        None => "never".into(),
    };
    format!(
        "Downloads: {}\nSeeds:     {}\nStalled:   {stall}",
        limit(queue.max_active_downloads),
        limit(queue.max_active_seeds),
    )
}
