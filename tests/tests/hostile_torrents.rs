//! Torrents built to escape the save folder, lie, or overwhelm: each is refused with a reason
//! and nothing is written anywhere.

use e2e::{run, Sandbox};
use std::path::Path;

/// A bencoded byte string.
fn b(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("{}:", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out
}

fn int(n: u64) -> Vec<u8> {
    format!("i{n}e").into_bytes()
}

/// A bencoded dictionary from (key, already-encoded value) pairs, keys as given.
fn dict(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![b'd'];
    for (key, value) in entries {
        out.extend(b(key.as_bytes()));
        out.extend_from_slice(value);
    }
    out.push(b'e');
    out
}

fn list(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![b'l'];
    for item in items {
        out.extend_from_slice(item);
    }
    out.push(b'e');
    out
}

fn hashes(n: usize) -> Vec<u8> {
    b(&vec![7u8; 20 * n])
}

fn single(name: &[u8], length: u64, piece_length: u64, pieces: usize) -> Vec<u8> {
    let info = dict(&[
        ("length", int(length)),
        ("name", b(name)),
        ("piece length", int(piece_length)),
        ("pieces", hashes(pieces)),
    ]);
    dict(&[("info", info)])
}

fn multi(name: &[u8], paths: &[&[&[u8]]], piece_length: u64) -> Vec<u8> {
    let files: Vec<Vec<u8>> = paths
        .iter()
        .map(|path| {
            let parts: Vec<Vec<u8>> = path.iter().map(|p| b(p)).collect();
            dict(&[("length", int(10)), ("path", list(&parts))])
        })
        .collect();
    let total = 10 * paths.len() as u64;
    let info = dict(&[
        ("files", list(&files)),
        ("name", b(name)),
        ("piece length", int(piece_length)),
        ("pieces", hashes(total.div_ceil(piece_length) as usize)),
    ]);
    dict(&[("info", info)])
}

/// Three files of i64::MAX bytes each: their sum overflows a u64.
fn overflowing_total() -> Vec<u8> {
    let big = i64::MAX as u64;
    let file = |name: &[u8]| dict(&[("length", int(big)), ("path", list(&[b(name)]))]);
    let info = dict(&[
        ("files", list(&[file(b"a"), file(b"b"), file(b"c")])),
        ("name", b(b"overflow")),
        ("piece length", int(1 << 30)),
        ("pieces", hashes(1)),
    ]);
    dict(&[("info", info)])
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn hostile_torrents_fail_to_start_with_a_reason_and_write_nothing() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("leecher");
    let downloads = sandbox.folder("jail/downloads");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("parent name", single(b"..", 10, 16384, 1), ".."),
        (
            "parent path",
            multi(b"dir", &[&[b"..", b"evil"]], 16384),
            "..",
        ),
        (
            "absolute path",
            multi(b"dir", &[&[b"/tmp/evil"]], 16384),
            "separator",
        ),
        ("empty name", single(b"", 10, 16384, 1), "name"),
        (
            "empty path part",
            multi(b"dir", &[&[b"a", b""]], 16384),
            "empty",
        ),
        (
            "duplicate files",
            multi(b"dir", &[&[b"a"], &[b"a"]], 16384),
            "duplicate",
        ),
        (
            "file and folder",
            multi(b"dir", &[&[b"a"], &[b"a", b"b"]], 16384),
            "both a file and a folder",
        ),
        (
            "piece count",
            single(b"a.bin", 100_000, 16384, 2),
            "piece hashes",
        ),
        ("not UTF-8", single(b"\xff\xfe.bin", 10, 16384, 1), "UTF-8"),
        // Found by fuzzing: librqbit divides by the piece length, and overflows on numbers
        // too big for its fields (the broker answered "internal error" after a panic).
        (
            "zero piece length",
            single(b"z.bin", 10, 0, 1),
            "piece length is 0",
        ),
        (
            "huge piece length",
            single(b"h.bin", 10, 1 << 40, 1),
            "out of its range",
        ),
        // Found by review: librqbit sums file lengths unchecked and counts pieces in a u32.
        (
            "overflowing total",
            overflowing_total(),
            "total size overflows",
        ),
        (
            "too many pieces",
            single(b"p.bin", 1 << 32, 1, 0),
            "more than any client counts",
        ),
        // 1 TiB in 512 pieces of 2 GiB: consistent, small, and far beyond the free space.
        (
            "huge size",
            single(b"huge.bin", 1 << 40, 1 << 31, 512),
            "free",
        ),
        (
            "not bencode",
            b"<html>404</html>".to_vec(),
            "not a valid .torrent",
        ),
    ];
    for (what, bytes, reason) in cases {
        let file = sandbox.path(&format!("{}.torrent", what.replace(' ', "-")));
        e2e::write_file(&file, &bytes);
        let add = sandbox.add_command(&state, &file, &downloads, None);
        let out = run(add).expect_code(3);
        let error = &out.json_lines()[0];
        assert_eq!(error["event"], "error", "{what}: {error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(reason),
            "{what}: the reason {message:?} should mention {reason:?}"
        );
    }
    // Nothing was created: not in the save folder, not beside it, not in /tmp.
    assert!(files_under(&sandbox.path("jail")).is_empty());
    assert!(!Path::new("/tmp/evil").exists());
    let mut list = sandbox.client(&state);
    list.args(["--json", "list"]);
    assert!(run(list).expect_code(0).json_lines().is_empty());
}

#[test]
fn a_torrent_named_with_terminal_escapes_is_refused_and_never_printed_raw() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("escapes");
    let downloads = sandbox.folder("downloads");
    // Clears the screen, then forges a line of output.
    let name = b"\x1b[2J\x1b[Hmovie\nAdded torrent 99 (forged)\x07";
    for (what, bytes) in [
        ("single", single(name, 10, 16384, 1)),
        ("multi", multi(b"dir", &[&[b"ok", name]], 16384)),
    ] {
        let file = sandbox.path(&format!("{what}-escapes.torrent"));
        e2e::write_file(&file, &bytes);
        let mut add = sandbox.client(&state);
        add.arg("add").arg(&file).arg("--output").arg(&downloads);
        let out = run(add);
        let printed = format!("{}{}", out.stdout, out.stderr);
        assert_eq!(out.code(), 3, "{what}: must be refused: {printed}");
        assert!(
            !printed.contains(['\x1b', '\x07']),
            "{what}: control characters reached the terminal raw: {printed:?}"
        );
        assert!(
            !printed.lines().any(|l| l.starts_with("Added torrent 99")),
            "{what}: a forged line was printed: {printed:?}"
        );
        assert!(printed.contains("control characters"), "{what}: {printed}");
    }
    assert!(files_under(&downloads).is_empty());
}

/// Adds `torrent` (written to a file) into `save`, with `--overwrite` if asked; returns the
/// exit code and what was printed.
fn add_into(
    sandbox: &Sandbox,
    state: &Path,
    what: &str,
    torrent: &[u8],
    save: &Path,
    overwrite: bool,
) -> (i32, String) {
    let file = sandbox.path(&format!("{what}.torrent"));
    e2e::write_file(&file, torrent);
    let mut add = sandbox.add_command(state, &file, save, None);
    if overwrite {
        add.arg("--overwrite");
    }
    let out = run(add);
    (out.code(), format!("{}{}", out.stdout, out.stderr))
}

#[test]
fn symlinks_in_the_save_folder_never_lead_a_write_outside_the_roots() {
    use std::os::unix::fs::symlink;
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("symlinks");
    let save = sandbox.folder("root/downloads");
    let elsewhere = sandbox.folder("elsewhere");
    let root = format!("--download-root={}", sandbox.path("root").display());
    let _broker = sandbox.broker(&state, &[&root]);

    // A folder symlink named like the torrent's own folder.
    symlink(&elsewhere, save.join("evil")).expect("folder symlink");
    let (code, printed) = add_into(
        &sandbox,
        &state,
        "folder-link",
        &multi(b"evil", &[&[b"a.bin"], &[b"sub", b"b.bin"]], 16384),
        &save,
        false,
    );
    assert_eq!(code, 3, "{printed}");
    assert!(printed.contains("symbolic link"), "{printed}");

    // A file symlink where the torrent's file goes, with --overwrite: its target is outside.
    let victim = elsewhere.join("victim.txt");
    std::fs::write(&victim, b"precious").expect("victim");
    symlink(&victim, save.join("target.bin")).expect("file symlink");
    let (code, printed) = add_into(
        &sandbox,
        &state,
        "file-link",
        &single(b"target.bin", 40_000, 16384, 3),
        &save,
        true,
    );
    assert_eq!(code, 3, "{printed}");
    assert!(printed.contains("symbolic link"), "{printed}");

    // Both adds were refused before any torrent started: nothing can write later.
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    assert_eq!(files_under(&elsewhere), vec![victim.display().to_string()]);
}

#[test]
fn a_torrent_never_adds_files_to_an_existing_folder_that_is_not_its_own() {
    let sandbox = Sandbox::new();
    let state = sandbox.state_dir("dotfolders");
    let home = sandbox.folder("home");
    let config = home.join(".config");
    std::fs::create_dir_all(&config).expect(".config");
    std::fs::write(config.join("settings.ini"), b"mine").expect("settings");
    let _broker = sandbox.broker(&state, &[]);

    for overwrite in [false, true] {
        let (code, printed) = add_into(
            &sandbox,
            &state,
            &format!("dot-config-{overwrite}"),
            &multi(b".config", &[&[b"autostart", b"evil.desktop"]], 16384),
            &home,
            overwrite,
        );
        assert_eq!(code, 3, "overwrite {overwrite}: {printed}");
        assert!(printed.contains("not this torrent's"), "{printed}");
    }
    assert_eq!(
        files_under(&config),
        vec![config.join("settings.ini").display().to_string()]
    );
}
