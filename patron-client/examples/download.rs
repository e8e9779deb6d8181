//! Download a torrent through the broker and follow it to completion.
//!
//! ```text
//! cargo run -p patron-client --example download -- FILE.torrent [SAVE_DIR] [PEER]...
//! ```
//!
//! Connects to the broker of `$TORRENT_PATRON_STATE` (starting one if none runs), adds the
//! torrent (or joins it if it already runs) and prints each status update until it completes.

use patron_client::proto::{CreateNewTorrent, Event, TorrentSource, TorrentState};
use patron_client::{Created, Patron};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let torrent = args
        .next()
        .ok_or("usage: download FILE.torrent [SAVE_DIR] [PEER]...")?;
    let save_dir = match args.next() {
        Some(dir) => std::path::absolute(dir)?,
        None => std::env::current_dir()?,
    };

    let mut request = CreateNewTorrent::new(TorrentSource::TorrentFile(std::fs::read(&torrent)?));
    request.output = Some(save_dir.display().to_string());
    request.peers = args.collect();

    let mut patron = Patron::connect()?;
    let created = patron.create(request)?;
    if let Created::AlreadyDownloading(info, _) = &created {
        println!("torrent {} was already running; following it", info.id);
    }
    let id = created.info().id;
    loop {
        match patron.next_event()? {
            Event::TorrentStatusUpdate(status) if status.id == id => {
                println!("{:5.1}% {}", status.progress * 100.0, status.state);
                if status.complete {
                    println!("done: {}", save_dir.join(&status.name).display());
                    return Ok(());
                }
                if let TorrentState::Error(message) = status.state {
                    return Err(message.into());
                }
            }
            Event::BrokerStopping { reason } => return Err(reason.into()),
            _ => {}
        }
    }
}
