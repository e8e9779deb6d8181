//! Status as people read it: one line per torrent, sizes and times in human units, and
//! names made safe for a terminal. Shared by the patron's CLI and the broker, which writes
//! each torrent's `list` line onto the status board once per change (see [`crate::board`]),
//! so that listing ten thousand torrents is a copy, not ten thousand formats.

use crate::TorrentStatus;

/// Text that came from a torrent, a peer or the broker (names, folders, messages), made safe
/// for a terminal: every control character, newlines included, is written as an escape
/// (`\u{1b}`), so a name can neither move the cursor nor forge a line (DESIGN §4). JSON output
/// needs none of this: serde_json escapes control characters itself.
pub fn shown(text: &str) -> String {
    escape_controls(text, false)
}

/// Like [`shown`], but keeps line breaks: for whole blocks of human output.
pub fn terminal_safe(text: &str) -> String {
    escape_controls(text, true)
}

fn escape_controls(text: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !(keep_newlines && c == '\n') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `s` cut to `max` characters, the last one then `…`.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Bytes for people: binary units, three significant figures.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Seconds for people: `42s`, `3m07s`, `5h02m`.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A torrent's line in `patron-client list` (and `watch` off a terminal): figures in
/// columns, the name last and whole (as transmission-remote's list has it), then an
/// error's text, whole. About 70 columns before the name.
pub fn status_line(status: &TorrentStatus) -> String {
    let eta = status.eta_secs.map(duration).unwrap_or_else(|| "-".into());
    let error = match &status.state {
        crate::TorrentState::Error(why) => format!("  error: {}", shown(why)),
        _ => String::new(),
    };
    // Never "100.0%" before it is complete: the last tenth is cut, not rounded up.
    let done = match status.complete {
        true => "100.0%".to_owned(),
        false => format!(
            "{:.1}%",
            (status.progress * 1000.0).floor().min(999.0) / 10.0
        ),
    };
    // The state column's words fit it ("resolving-metadata" is "resolving" here only).
    let state = match status.state {
        crate::TorrentState::ResolvingMetadata => "resolving",
        _ => status.state.as_str(),
    };
    format!(
        "{:>4} {:>6} {:>10} {:>7} {:>10} {:>10} {:>5} {:>5} {:<11} {}{error}",
        status.id.0,
        done,
        bytes(status.bytes_total),
        eta,
        bytes(status.download_rate),
        bytes(status.upload_rate),
        ratio(status.ratio()),
        status.peers,
        state,
        shown(&status.name),
    )
}

/// The header above [`status_line`]s in `patron-client list`.
pub fn list_header() -> String {
    format!(
        "{:>4} {:>6} {:>10} {:>7} {:>10} {:>10} {:>5} {:>5} {:<11} NAME",
        "ID", "DONE", "SIZE", "ETA", "DOWN/s", "UP/s", "RATIO", "PEERS", "STATE"
    )
}

/// A share ratio in a column of five: `0.00` to `99.9`, then `>100`.
fn ratio(ratio: f64) -> String {
    match ratio {
        r if r < 10.0 => format!("{r:.2}"),
        r if r < 100.0 => format!("{r:.1}"),
        _ => ">100".to_owned(),
    }
}

/// A byte count as users type it, the one parser of sizes, offsets and rates: digits, with
/// a fraction when a K, M, G or T (powers of 1024) follows (`1.5M`, rounded down to the
/// byte), and an optional `B`/`iB`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let t = s.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => t.split_at(at),
        None => (t, ""),
    };
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(scale)?;
    if !fraction.is_empty() {
        // A fraction of a unit, rounded down to the byte; a fraction of a byte is a typo.
        if scale == 1 || fraction.len() > 12 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits: u128 = fraction.parse().ok()?;
        let part = digits * u128::from(scale) / 10u128.pow(fraction.len() as u32);
        value = value.checked_add(u64::try_from(part).ok()?)?;
    }
    Some(value)
}

/// A length of time as users type it, the one parser of durations: a number with a unit
/// (`90s`, `30m`, `2h`, `3d`, `1w`), or several (`1h30m`); a bare number is in `bare_unit`
/// seconds (minutes, for transmission's `--stalled-after 30`). Seconds, or `None` for what
/// is not one.
pub fn parse_duration(s: &str, bare_unit: u64) -> Option<u64> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().ok()?.checked_mul(bare_unit);
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "secs" => 1,
            "m" | "min" | "mins" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return None,
        };
        let part = number.parse::<u64>().ok()?.checked_mul(scale)?;
        total = total.checked_add(part)?;
        rest = tail;
    }
    Some(total)
}

/// A limit on a count as users type it: a number, or `none` (also `unlimited`, `-1`) for
/// no limit. `None` for what is not one.
pub fn parse_count_limit(s: &str) -> Option<Option<u32>> {
    match s.trim().to_ascii_lowercase().as_str() {
        "none" | "unlimited" | "-1" => Some(None),
        n => n.parse().ok().map(Some),
    }
}

/// Whether a user typed "no limit": `none`, `unlimited`, `never`.
fn no_limit(s: &str) -> bool {
    matches!(s.trim(), "none" | "unlimited" | "never")
}

/// A ratio limit as users type it: a number (`2`, `1.5`) the broker keeps
/// ([`crate::valid_ratio_limit`]), or `none` (`Some(None)`). `None` for what is neither.
pub fn parse_ratio_limit(s: &str) -> Option<Option<f64>> {
    if no_limit(s) {
        return Some(None);
    }
    let ratio: f64 = s.trim().parse().ok()?;
    crate::valid_ratio_limit(ratio).then_some(Some(ratio))
}

/// A time limit as users type it: a duration (`90s`, `3d`; a bare number is minutes) of a
/// second at least, or `none`/`never` (`Some(None)`). `None` for what is neither.
pub fn parse_time_limit(s: &str) -> Option<Option<u64>> {
    if no_limit(s) {
        return Some(None);
    }
    parse_duration(s, 60).filter(|&secs| secs > 0).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_count_limits_read_as_users_type_them() {
        assert_eq!(parse_duration("30", 60), Some(1800));
        assert_eq!(parse_duration("90s", 60), Some(90));
        assert_eq!(parse_duration("1h30m", 60), Some(5400));
        assert_eq!(parse_duration("3d", 60), Some(3 * 86_400));
        for bad in ["", "h", "5x", "-3", "1.5h", "9999999999999999999d"] {
            assert_eq!(parse_duration(bad, 60), None, "{bad:?}");
        }
        assert_eq!(parse_count_limit("5"), Some(Some(5)));
        assert_eq!(parse_count_limit("none"), Some(None));
        assert_eq!(parse_count_limit("-1"), Some(None));
        assert_eq!(parse_count_limit("five"), None);
        assert_eq!(parse_ratio_limit("1.5"), Some(Some(1.5)));
        assert_eq!(parse_ratio_limit("none"), Some(None));
        assert_eq!(parse_ratio_limit("0"), None);
        assert_eq!(parse_time_limit("never"), Some(None));
        assert_eq!(parse_time_limit("90s"), Some(Some(90)));
        assert_eq!(parse_time_limit("0"), None);
    }

    #[test]
    fn the_columns_line_up_under_the_header_and_the_name_comes_last() {
        let info = crate::TorrentInfo {
            id: crate::TorrentId(3),
            info_hash: crate::InfoHash([0; 20]),
            name: "a movie with a name longer than any column".into(),
            save_folder: "/d".into(),
            total_bytes: 100,
        };
        let mut status = TorrentStatus::idle(&info, crate::TorrentState::Downloading);
        status.peers = 1;
        let line = status_line(&status);
        let header = list_header();
        assert_eq!(
            header.find("NAME"),
            line.find("a movie"),
            "{header}\n{line}"
        );
        assert_eq!(
            header.find("STATE"),
            line.find("downloading"),
            "{header}\n{line}"
        );
        assert!(
            line.ends_with("a movie with a name longer than any column"),
            "{line}"
        );
        assert!(line.find("a movie").is_some_and(|at| at <= 78), "{line}");
        // An error's text comes after the name, whole; the figures stay in their columns.
        status.state = crate::TorrentState::Error("the disk is gone".into());
        let failed = status_line(&status);
        assert_eq!(failed.find("error "), line.find("downloading"), "{failed}");
        assert!(failed.ends_with("  error: the disk is gone"), "{failed}");
        // Not complete is never "100.0%"; a long state keeps the name in its column.
        status.state = crate::TorrentState::ResolvingMetadata;
        status.progress = 0.9996;
        let almost = status_line(&status);
        assert!(almost.contains(" 99.9% "), "{almost}");
        assert_eq!(header.find("NAME"), almost.find("a movie"), "{almost}");
        assert_eq!(header.find("NAME"), failed.find("a movie"), "{failed}");
    }

    #[test]
    fn names_cannot_move_the_cursor_or_forge_lines() {
        let evil = "\x1b[2Jmovie\nAdded torrent 99\x07\u{9b}";
        let safe = shown(evil);
        assert!(!safe.chars().any(char::is_control), "{safe:?}");
        assert!(safe.contains("movie") && safe.contains("\\u{1b}"));
        assert_eq!(terminal_safe("a\nb\x1b"), "a\nb\\u{1b}");
        assert_eq!(shown("plain ünïcode name"), "plain ünïcode name");
    }
}
