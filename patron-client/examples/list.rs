//! List the torrents of the broker, without starting one if none runs.
//!
//! ```text
//! cargo run -p patron-client --example list
//! ```

use patron_client::{ConnectOptions, Patron};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = ConnectOptions {
        auto_start: false,
        ..ConnectOptions::default()
    };
    let mut patron = Patron::connect_with(&options)?;
    for torrent in patron.list()? {
        println!(
            "{:>4} {:<40} {:>6.1}% {} (held by {} patrons)",
            torrent.info.id,
            torrent.info.name,
            torrent.status.progress * 100.0,
            torrent.status.state,
            torrent.holders
        );
    }
    Ok(())
}
