//! `GET /files/{id}/{file}`: one file of a torrent over HTTP, with `Range`, while it
//! downloads (DESIGN §8, §11). Each answer is a stream of the broker's (a connection of its
//! own): its window moves to the range's start, as `cat --offset` does, and every byte is
//! sent once its piece is verified. `{file}` is an index as `files` lists it, or a path
//! inside the torrent.
//!
//! The file is served as a download of bytes, never as a page of this site: its type comes
//! from its extension among media and plain types only, and the answer is sandboxed (a
//! torrent's `.html` cannot run script as this server).

use crate::api::{torrent_ref, Failure};
use crate::Shared;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use patron_client::proto::FileRef;
use patron_client::{Error, Stream};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

/// Files served at once (each holds a stream of the broker's, whose limits are the
/// broker's: 16 per patron, 256 in all); more are told to come back.
pub const MAX_STREAMS: usize = 64;

/// Bytes read from the file per chunk sent.
const CHUNK: usize = 256 * 1024;

/// The answer's streams in flight.
pub struct Streams {
    permits: Arc<Semaphore>,
    /// How long a client may take no bytes before its answer is cut: a client that never
    /// reads would otherwise hold one of [`MAX_STREAMS`] (and a stream of the broker's) for
    /// ever. A paused player asks again with `Range` when it plays on.
    stall: std::time::Duration,
}

impl Streams {
    pub fn new(stall: std::time::Duration) -> Streams {
        Streams {
            permits: Arc::new(Semaphore::new(MAX_STREAMS)),
            stall,
        }
    }
}

/// The handler (`HEAD` too: the same headers, no body).
pub async fn serve(
    State(web): State<Shared>,
    Path((torrent, file)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let torrent = torrent_ref(&torrent)?;
    let file = match file.parse::<u32>() {
        Ok(index) => FileRef::Index(index),
        Err(_) => FileRef::Path(file.strip_prefix("./").unwrap_or(&file).to_owned()),
    };
    let Ok(permit) = Arc::clone(&web.streams.permits).try_acquire_owned() else {
        let mut busy = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many files are being served; try again shortly",
        );
        busy.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(busy);
    };
    let options = web.link.options().clone();
    let mut stream =
        tokio::task::spawn_blocking(move || Stream::open(&options, torrent, Some(file), 0))
            .await
            .map_err(|e| Failure(Error::Protocol(format!("cannot open the stream: {e}"))))??;
    let entry = stream.info().file.clone();
    let size = entry.size;
    let etag = format!("\"t{}-f{}-{}\"", stream.info().torrent.0, entry.index, size);
    let range = match ranged(&headers, &etag) {
        None => None,
        Some(range) => match parse_range(range, size) {
            Ranged::Bytes(first, last) => Some((first, last)),
            Ranged::Ignored => None,
            Ranged::Unsatisfiable => {
                let mut refused = error_response(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    &format!("the range {range:?} is not within the file's {size} bytes"),
                );
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    refused.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return Ok(refused);
            }
        },
    };
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let length = if size == 0 { 0 } else { end - start + 1 };

    let mut response = Response::builder()
        .status(if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(header::CONTENT_LENGTH, length)
        .header(header::CONTENT_TYPE, content_type(&entry.path))
        .header(
            header::CONTENT_SECURITY_POLICY,
            "sandbox; default-src 'none'",
        )
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(disposition) = disposition(&entry.path) {
        response = response.header(header::CONTENT_DISPOSITION, disposition);
    }
    if range.is_some() {
        response = response.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
    }
    if method == Method::HEAD {
        // The headers say it all: no reader waits for bytes nobody will take.
        drop((stream, permit));
        return response
            .body(Body::empty())
            .map_err(|e| Failure(Error::Protocol(format!("cannot answer: {e}"))));
    }
    let (sender, receiver) = mpsc::channel::<std::io::Result<Bytes>>(4);
    if length > 0 {
        let (runtime, stall) = (tokio::runtime::Handle::current(), web.streams.stall);
        std::thread::Builder::new()
            .name("file".into())
            .spawn(move || {
                let _permit = permit;
                let sender = Sender {
                    runtime,
                    sender,
                    stall,
                };
                send_range(&mut stream, start, length, &sender);
            })
            .map_err(|source| {
                Failure(Error::Io {
                    context: "cannot start a stream's thread".into(),
                    source,
                })
            })?;
    }
    let body = Body::from_stream(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|chunk| (chunk, receiver)) },
    ));
    response
        .body(body)
        .map_err(|e| Failure(Error::Protocol(format!("cannot answer: {e}"))))
}

/// Reads `length` bytes from `start` and sends them in chunks, each once verified, until
/// the client goes (the channel closes) or the stream fails (the body ends in an error, so
/// the client sees a cut answer, not a short file).
fn send_range(stream: &mut Stream, start: u64, length: u64, sender: &Sender) {
    if let Err(e) = stream.seek(SeekFrom::Start(start)) {
        let _ = sender.blocking_send(Err(e));
        return;
    }
    let mut left = length;
    while left > 0 {
        // Waits for verified bytes a slice at a time, so that a client gone meanwhile (for
        // a piece that may never come) is noticed, and its stream let go.
        loop {
            if sender.is_closed() {
                return;
            }
            match stream.wait_readable_for(std::time::Duration::from_millis(500)) {
                Ok(Some(_)) => break,
                Ok(None) => continue,
                Err(e) => {
                    let _ = sender.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            }
        }
        let mut chunk = vec![0u8; CHUNK.min(left as usize)];
        match stream.read(&mut chunk) {
            Ok(0) => {
                let _ = sender.blocking_send(Err(std::io::Error::other("the file ended early")));
                return;
            }
            Ok(n) => {
                chunk.truncate(n);
                left -= n as u64;
                if sender.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                    return; // The client went.
                }
            }
            Err(e) => {
                let _ = sender.blocking_send(Err(e));
                return;
            }
        }
    }
}

/// The body's sending end, on a thread of its own.
struct Sender {
    runtime: tokio::runtime::Handle,
    sender: mpsc::Sender<std::io::Result<Bytes>>,
    stall: std::time::Duration,
}

impl Sender {
    /// Sends `item`; `Err` when the client went, or took nothing for the stall limit.
    fn blocking_send(&self, item: std::io::Result<Bytes>) -> Result<(), ()> {
        self.runtime
            .block_on(self.sender.send_timeout(item, self.stall))
            .map_err(drop)
    }

    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// The `Range` header to honour: none if absent, or if `If-Range` names another version.
fn ranged<'a>(headers: &'a HeaderMap, etag: &str) -> Option<&'a str> {
    let range = headers.get(header::RANGE)?.to_str().ok()?;
    match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        Some(tag) if tag != etag => None,
        _ => Some(range),
    }
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Ranged {
    /// One range, inclusive.
    Bytes(u64, u64),
    /// One range that lies outside the file: 416.
    Unsatisfiable,
    /// A header that is not one byte range (another unit, several ranges, not a range at
    /// all): ignored, as RFC 9110 lets a server do; the whole file is sent.
    Ignored,
}

/// One byte range (`bytes=A-B`, `bytes=A-`, `bytes=-N`; the unit in any case, spaces
/// around it allowed) of a file of `size` bytes. An end past the file is the file's end.
pub fn parse_range(range: &str, size: u64) -> Ranged {
    let Some((unit, spec)) = range.trim().split_once('=') else {
        return Ranged::Ignored;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return Ranged::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Ignored;
    };
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // A number of digits too long for a u64 is past any file's end.
    let number = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
    match (digits(first), digits(last), first.is_empty()) {
        (false, true, true) => match number(last) {
            0 => Ranged::Unsatisfiable,
            _ if size == 0 => Ranged::Unsatisfiable,
            suffix => Ranged::Bytes(size.saturating_sub(suffix), size - 1),
        },
        (true, _, _) if last.is_empty() || digits(last) => {
            let first = number(first);
            if first >= size {
                return Ranged::Unsatisfiable;
            }
            let last = if last.is_empty() {
                size - 1
            } else {
                number(last).min(size - 1)
            };
            if first > last {
                return Ranged::Ignored;
            }
            Ranged::Bytes(first, last)
        }
        _ => Ranged::Ignored,
    }
}

/// A media or plain type from the extension; anything else is bytes.
fn content_type(path: &str) -> &'static str {
    let extension = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "ogv" => "video/ogg",
        "avi" => "video/x-msvideo",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "m4a" | "aac" => "audio/mp4",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "flac" => "audio/flac",
        "wav" => "audio/wav",
        "txt" | "nfo" | "md" | "srt" | "vtt" => "text/plain; charset=utf-8",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// `inline` with the file's own name (RFC 6266's UTF-8 form), for media and text; other
/// files are downloads.
fn disposition(path: &str) -> Option<String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let kind = match content_type(path) {
        "application/octet-stream" => "attachment",
        _ => "inline",
    };
    let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    Some(format!("{kind}; filename*=UTF-8''{encoded}"))
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"event": "error", "kind": "bad-request", "message": message});
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::{parse_range, Ranged};

    #[test]
    fn ranges_read_as_rfc_9110_says() {
        use Ranged::*;
        assert_eq!(parse_range("bytes=0-0", 10), Bytes(0, 0));
        assert_eq!(parse_range("bytes=9-", 10), Bytes(9, 9));
        assert_eq!(parse_range("bytes=-3", 10), Bytes(7, 9));
        assert_eq!(parse_range("bytes=-30", 10), Bytes(0, 9));
        assert_eq!(parse_range("bytes=5-100", 10), Bytes(5, 9));
        assert_eq!(parse_range("BYTES=0-1", 10), Bytes(0, 1));
        assert_eq!(parse_range("bytes = 0-1", 10), Bytes(0, 1));
        assert_eq!(
            parse_range("bytes=1-99999999999999999999999", 10),
            Bytes(1, 9)
        );
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-4", 10), Ignored);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Ignored);
        assert_eq!(parse_range("items=0-1", 10), Ignored);
        assert_eq!(parse_range("bytes=abc", 10), Ignored);
        assert_eq!(parse_range("bytes=+1-2", 10), Ignored);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
    }
}
