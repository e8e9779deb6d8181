//! `_native.Connection`: the requests, board reads and waits the Python classes are made
//! of. Each request is built from a method name and its keyword arguments, sent, and its
//! reply turned into a Python value; the sync `Patron` waits for it here with the GIL
//! released, the `AsyncPatron` gets it through an asyncio future.

use crate::core::{lock, sliced, until, Core, Failure};
use crate::errors;
use crate::values::{
    Added, BrokerStopping, Closed, File, Made, Peer, Status, StatusChanged, TorrentGone,
};
use patron_client::proto::{
    AltChange, AltSchedule, CloseTorrent, CreateNewTorrent, Event, FileRef, FilesRequest,
    MakeTorrent, MoveInQueue, OwnSeedingChange, PeersRequest, QueueMove, RequestBody, SeedAction,
    SeedLimit, SetLimits, SetQueue, SetSeeding, TorrentRef, TorrentSource, TorrentState,
};
use patron_client::{Board, ConnectOptions};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Boards kept for waits between them (each is a mapping and one of the broker's waiters).
const IDLE_BOARDS: usize = 4;

/// Seconds as a person writes them: `0.5`, `2`, `1.25`.
fn seconds(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// When a wait of `timeout` seconds ends (`None`: never).
fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t >= 0.0 && t.is_finite() => {
            Ok(Some(Instant::now() + Duration::from_secs_f64(t.min(1e9))))
        }
        Some(t) => Err(PyValueError::new_err(format!(
            "timeout must be a number of seconds, 0 or more, not {t}"
        ))),
    }
}

/// Runs `work` (a connection's handshake, up to its timeout) on a thread of its own while
/// this one waits in slices, so that Ctrl-C interrupts the wait; what `work` gives once
/// nobody waits is handed to `abandon` (a connection made anyway is closed).
fn interruptible<T, E>(
    py: Python<'_>,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
    abandon: impl FnOnce(T) + Send + 'static,
) -> PyResult<Result<T, E>>
where
    T: Send + 'static,
    E: Send + 'static,
{
    let (done, mut made) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("torrent-patron-connect".into())
        .spawn(move || {
            if let Err(std::sync::mpsc::TrySendError::Disconnected(Ok(made))) =
                done.try_send(work())
            {
                abandon(made);
            }
        })
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("cannot start a thread: {e}")))?;
    until(py, |slice| {
        let waiting = &mut made;
        match crate::detach(py, move || waiting.recv_timeout(slice)) {
            Ok(result) => Ok(Some(result)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "the connecting thread ended without a word",
                ))
            }
        }
    })
}

/// A reply handed to Python through an asyncio future, decoded by [`Connection::decode`].
#[pyclass(frozen, module = "torrent_patron._native")]
pub struct Reply(pub Mutex<Option<Result<Event, Failure>>>);

impl Reply {
    pub fn new(reply: Result<Event, Failure>) -> Reply {
        Reply(Mutex::new(Some(reply)))
    }
}

/// A patron connection: requests, board reads, events.
#[pyclass(frozen, module = "torrent_patron._native")]
pub struct Connection {
    core: Arc<Core>,
    /// For reads (`list`, `status`): a few atomic loads each, under this lock.
    board: Mutex<Option<Board>>,
    /// Boards for waits, one per thread waiting at once (a wait sleeps with its board).
    idle_boards: Mutex<Vec<Board>>,
    /// The patron's bound on each answer, in seconds (`None`: wait for the broker).
    timeout: Option<f64>,
}

/// A torrent named by id (an int, or a string of digits) or info hash.
pub fn torrent_ref(value: &Bound<'_, PyAny>) -> PyResult<TorrentRef> {
    // `True` is an int to Python, not a torrent to a reader.
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "a torrent is named by its id (int) or info hash (str), not {value}"
        )));
    }
    // An int, or what stands for one (numpy's, with `__index__`).
    if value.is_instance_of::<pyo3::types::PyInt>() || value.hasattr("__index__")? {
        return match value.extract::<u64>() {
            Ok(id) => Ok(TorrentRef::Id(patron_client::proto::TorrentId(id))),
            Err(_) => Err(PyValueError::new_err(format!(
                "no torrent has the id {value}: ids run from 0 to 2**64 - 1"
            ))),
        };
    }
    let text: String = value.extract().map_err(|_| {
        PyTypeError::new_err("a torrent is named by its id (int) or info hash (str)")
    })?;
    TorrentRef::parse(&text).ok_or_else(|| {
        PyValueError::new_err(format!(
            "{text:?} is neither a torrent id nor an info hash (40 hex digits)"
        ))
    })
}

fn file_ref(value: &Bound<'_, PyAny>) -> PyResult<FileRef> {
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "a file is named by its index (int) or path (str), not {value}"
        )));
    }
    if let Ok(index) = value.extract::<u32>() {
        return Ok(FileRef::Index(index));
    }
    value
        .extract::<String>()
        .map(FileRef::Path)
        .map_err(|_| PyTypeError::new_err("a file is named by its index (int) or path (str)"))
}

fn arg<'py, T>(args: &Bound<'py, PyDict>, name: &str) -> PyResult<Option<T>>
where
    T: for<'a> FromPyObject<'a, 'py, Error = PyErr>,
{
    match args.get_item(name)? {
        Some(value) if !value.is_none() => value.extract().map(Some).map_err(|e: PyErr| {
            // The cause's words only: its class name would read twice.
            PyTypeError::new_err(format!("{name}: {}", e.value(value.py())))
        }),
        _ => Ok(None),
    }
}

fn required<'py, T>(args: &Bound<'py, PyDict>, name: &str) -> PyResult<T>
where
    T: for<'a> FromPyObject<'a, 'py, Error = PyErr>,
{
    arg(args, name)?.ok_or_else(|| PyTypeError::new_err(format!("{name} is required")))
}

fn ref_arg(args: &Bound<'_, PyDict>) -> PyResult<TorrentRef> {
    match args.get_item("ref")? {
        Some(value) => torrent_ref(&value),
        None => Err(PyTypeError::new_err("ref is required")),
    }
}

/// A limit on how many torrents run at once, as a queue call gives it: absent, unchanged
/// (`None`); `None`, no limit (`Some(None)`); or a number.
fn count_limit(args: &Bound<'_, PyDict>, name: &str) -> PyResult<Option<Option<u32>>> {
    match args.get_item(name)? {
        None => Ok(None),
        Some(value) if value.is_none() => Ok(Some(None)),
        Some(value) if value.is_instance_of::<pyo3::types::PyBool>() => Err(PyTypeError::new_err(
            format!("{name} is a number of torrents (or None: no limit), not a bool"),
        )),
        Some(value) => value.extract::<u32>().map(|n| Some(Some(n))).map_err(|_| {
            PyValueError::new_err(format!(
                "{name} is a number of torrents from 0 to 4294967295, or None: no limit"
            ))
        }),
    }
}

/// A seeding limit as a call gives it: absent (`None`), `None` (no limit:
/// `Some(Some(Unlimited))`), `"default"` (a torrent's: the broker's again, `Some(None)`), or
/// a number: a ratio above 0, or seconds from 1.
fn seed_arg(
    args: &Bound<'_, PyDict>,
    name: &str,
    secs: bool,
) -> PyResult<Option<Option<SeedLimit<f64>>>> {
    let Some(value) = args.get_item(name)? else {
        return Ok(None);
    };
    if value.is_none() {
        return Ok(Some(Some(SeedLimit::Unlimited)));
    }
    if value.extract::<String>().is_ok_and(|s| s == "default") {
        return Ok(Some(None));
    }
    let bad = || match secs {
        true => format!("{name} is whole seconds (at least 1), None (no limit) or \"default\""),
        false => format!("{name} is a ratio above 0, None (no limit) or \"default\""),
    };
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(bad()));
    }
    let number: f64 = value.extract().map_err(|_| PyTypeError::new_err(bad()))?;
    // Whole seconds (the pipe's rule); the broker says which ranges it keeps.
    let whole = !secs || number.fract() == 0.0;
    if !(number.is_finite() && number > 0.0 && number <= 1e15 && whole) {
        return Err(PyValueError::new_err(bad()));
    }
    Ok(Some(Some(SeedLimit::At(number))))
}

fn as_secs(limit: SeedLimit<f64>) -> SeedLimit<u64> {
    match limit {
        SeedLimit::At(secs) => SeedLimit::At(secs as u64),
        SeedLimit::Unlimited => SeedLimit::Unlimited,
    }
}

/// The request a method sends.
fn request(method: &str, args: &Bound<'_, PyDict>) -> PyResult<RequestBody> {
    Ok(match method {
        "add" => {
            let source = match args.get_item("source")? {
                Some(s) if s.is_instance_of::<pyo3::types::PyBytes>() => {
                    TorrentSource::TorrentFile(s.extract()?)
                }
                Some(s) => TorrentSource::Magnet(s.extract()?),
                None => return Err(PyTypeError::new_err("source is required")),
            };
            let mut create = CreateNewTorrent::new(source);
            create.output = arg(args, "output")?;
            create.peers = arg(args, "peers")?.unwrap_or_default();
            create.paused = arg(args, "paused")?.unwrap_or(false);
            create.only_files = match args.get_item("only")? {
                Some(only) if !only.is_none() => Some(
                    only.try_iter()?
                        .map(|f| file_ref(&f?))
                        .collect::<PyResult<Vec<_>>>()?,
                ),
                _ => None,
            };
            create.max_download_rate = arg(args, "max_download_rate")?;
            create.max_upload_rate = arg(args, "max_upload_rate")?;
            create.ephemeral = arg(args, "ephemeral")?.unwrap_or(false);
            create.overwrite = arg(args, "overwrite")?.unwrap_or(false);
            create.move_completed_to = arg(args, "move_completed_to")?;
            create.labels = arg(args, "labels")?.unwrap_or_default();
            RequestBody::CreateNewTorrent(create)
        }
        "close" => RequestBody::CloseTorrent(CloseTorrent {
            torrent: ref_arg(args)?,
            delete_data: arg(args, "delete_data")?.unwrap_or(false),
            force: arg(args, "force")?.unwrap_or(false),
        }),
        "pause" => RequestBody::Pause(ref_arg(args)?),
        "resume" => RequestBody::Resume(ref_arg(args)?),
        "recheck" => RequestBody::Recheck(ref_arg(args)?),
        "move" => RequestBody::MoveStorage(patron_client::proto::MoveStorage {
            torrent: ref_arg(args)?,
            to: arg(args, "to")?.ok_or_else(|| PyTypeError::new_err("to is required"))?,
        }),
        "follow" => RequestBody::Follow(ref_arg(args)?),
        "files" => RequestBody::Files(FilesRequest {
            torrent: ref_arg(args)?,
            only: None,
        }),
        "select_files" => {
            let only = match args.get_item("only")? {
                Some(only) => only
                    .try_iter()?
                    .map(|f| file_ref(&f?))
                    .collect::<PyResult<Vec<_>>>()?,
                None => return Err(PyTypeError::new_err("only is required")),
            };
            RequestBody::Files(FilesRequest {
                torrent: ref_arg(args)?,
                only: Some(only),
            })
        }
        "peers" => RequestBody::Peers(PeersRequest {
            torrent: ref_arg(args)?,
            add: Vec::new(),
        }),
        "add_peers" => RequestBody::Peers(PeersRequest {
            torrent: ref_arg(args)?,
            add: required(args, "peers")?,
        }),
        "make" => RequestBody::MakeTorrent(MakeTorrent {
            path: required(args, "path")?,
            piece_size: arg(args, "piece_size")?,
            trackers: arg(args, "trackers")?.unwrap_or_default(),
            seed: arg(args, "seed")?.unwrap_or(false),
        }),
        "broker_info" => RequestBody::BrokerInfo,
        "limits" => RequestBody::SetLimits(SetLimits {
            torrent: match args.get_item("ref")? {
                Some(value) if !value.is_none() => Some(torrent_ref(&value)?),
                _ => None,
            },
            download: arg(args, "download")?,
            upload: arg(args, "upload")?,
            alt: AltChange {
                download: arg(args, "alt_download")?,
                upload: arg(args, "alt_upload")?,
                schedule: match args.get_item("alt_schedule")? {
                    None => None,
                    Some(value) if value.is_none() => Some(None),
                    Some(value) => {
                        let text: String = value.extract().map_err(|_| {
                            PyTypeError::new_err(
                                "alt_schedule is a str (\"mon-fri 09:00-18:00\") or None",
                            )
                        })?;
                        Some(Some(AltSchedule::parse(&text).ok_or_else(|| {
                            PyValueError::new_err(format!(
                                "alt_schedule {text:?} is not days and hours, as \"mon-fri 09:00-18:00\""
                            ))
                        })?))
                    }
                },
                hours: None,
                on: arg(args, "alt_on")?,
            },
        }),
        "queue" => RequestBody::SetQueue(SetQueue {
            max_active_downloads: count_limit(args, "downloads")?,
            max_active_seeds: count_limit(args, "seeds")?,
            stalled_after_secs: match args.get_item("stalled_after")? {
                None => None,
                Some(value) if value.is_none() => Some(None),
                Some(value) => {
                    let secs: f64 = match value.is_instance_of::<pyo3::types::PyBool>() {
                        true => None,
                        false => value.extract().ok(),
                    }
                    .ok_or_else(|| {
                        PyTypeError::new_err("stalled_after is seconds (a number), or None: never")
                    })?;
                    if !(secs.is_finite() && (1.0..1e15).contains(&secs)) {
                        return Err(PyValueError::new_err(
                            "stalled_after is at least one second (None: never)",
                        ));
                    }
                    Some(Some(secs as u64))
                }
            },
        }),
        "queue_move" => RequestBody::MoveInQueue(MoveInQueue {
            torrent: ref_arg(args)?,
            to: {
                let to: String = required(args, "to")?;
                QueueMove::parse(&to).ok_or_else(|| {
                    PyValueError::new_err(format!("to is top, up, down or bottom, not {to:?}"))
                })?
            },
        }),
        "label" => RequestBody::SetLabels(patron_client::proto::SetLabels {
            torrent: ref_arg(args)?,
            labels: arg(args, "labels")?.unwrap_or_default(),
        }),
        "labels" => {
            // Present and None: lifted; absent: unchanged.
            fn lifted<'py, T>(args: &Bound<'py, PyDict>, name: &str) -> PyResult<Option<Option<T>>>
            where
                T: for<'a> FromPyObject<'a, 'py, Error = PyErr>,
            {
                match args.get_item(name)? {
                    None => Ok(None),
                    Some(value) if value.is_none() => Ok(Some(None)),
                    Some(_) => arg(args, name).map(Some),
                }
            }
            RequestBody::ConfigureLabel(Box::new(patron_client::proto::ConfigureLabel {
                name: arg(args, "name")?,
                folder: lifted(args, "folder")?,
                download: lifted(args, "max_download_rate")?,
                upload: lifted(args, "max_upload_rate")?,
                seeding: OwnSeedingChange {
                    ratio: seed_arg(args, "ratio", false)?,
                    seed_time_secs: seed_arg(args, "seed_time", true)?.map(|g| g.map(as_secs)),
                    idle_secs: seed_arg(args, "idle", true)?.map(|g| g.map(as_secs)),
                },
                remove: arg(args, "remove")?.unwrap_or(false),
            }))
        }
        "seeding" => {
            let ratio = seed_arg(args, "ratio", false)?;
            let seed_time = seed_arg(args, "seed_time", true)?;
            let idle = seed_arg(args, "idle", true)?;
            let action = match arg::<String>(args, "action")? {
                None => None,
                Some(word) => Some(SeedAction::parse(&word).ok_or_else(|| {
                    PyValueError::new_err(format!("action is \"pause\" or \"close\", not {word:?}"))
                })?),
            };
            let mut change = SetSeeding {
                action,
                ..SetSeeding::default()
            };
            match args.get_item("ref")? {
                Some(value) if !value.is_none() => {
                    change.torrent = Some(torrent_ref(&value)?);
                    change.own = OwnSeedingChange {
                        ratio,
                        seed_time_secs: seed_time.map(|g| g.map(as_secs)),
                        idle_secs: idle.map(|g| g.map(as_secs)),
                    };
                }
                _ => {
                    let broker = |given: Option<SeedLimit<f64>>| {
                        match given {
                        None => Err(PyValueError::new_err(
                            "\"default\" gives a torrent the broker's limit; the broker's own is a number or None",
                        )),
                        Some(SeedLimit::Unlimited) => Ok(None),
                        Some(SeedLimit::At(value)) => Ok(Some(value)),
                    }
                    };
                    change.ratio = ratio.map(broker).transpose()?;
                    change.seed_time_secs = seed_time
                        .map(broker)
                        .transpose()?
                        .map(|s| s.map(|s| s as u64));
                    change.idle_secs = idle.map(broker).transpose()?.map(|s| s.map(|s| s as u64));
                }
            }
            RequestBody::SetSeeding(change)
        }
        "stop_broker" => RequestBody::StopBroker,
        "status_request" => RequestBody::Status(ref_arg(args)?),
        "list_request" => RequestBody::List,
        other => return Err(PyValueError::new_err(format!("no method {other:?}"))),
    })
}

/// A method's reply as its Python value (or its error raised).
fn decode(py: Python<'_>, method: &str, reply: Result<Event, Failure>) -> PyResult<Py<PyAny>> {
    let event = reply.map_err(|f| errors::from_failure(py, f))?;
    let unexpected = |event: &Event| {
        errors::error(
            py,
            "ProtocolError",
            "protocol",
            &format!("unexpected reply to {method}: {event:?}"),
        )
    };
    let value: Py<PyAny> = match (method, event) {
        (_, Event::Error { error, .. }) | (_, Event::TorrentStartFail { error, .. }) => {
            return Err(errors::refusal(py, &error))
        }
        (
            "add",
            Event::NewTorrentCreated {
                torrent, queued, ..
            },
        ) => Py::new(py, Added::new(torrent, false, Vec::new(), queued))?.into_any(),
        (
            "add",
            Event::TorrentAlreadyDownloading {
                torrent,
                not_applied,
                ..
            },
        ) => Py::new(py, Added::new(torrent, true, not_applied, false))?.into_any(),
        (
            "close",
            Event::TorrentClosed {
                id,
                stopped,
                data_deleted,
                ..
            },
        ) => Py::new(
            py,
            Closed {
                id: id.0,
                stopped,
                data_deleted,
            },
        )?
        .into_any(),
        (
            "pause" | "resume" | "recheck" | "move" | "label" | "status_request",
            Event::Status { status, .. },
        ) => Py::new(py, Status::from_status(status))?.into_any(),
        ("follow", Event::Following { .. }) => py.None(),
        ("files" | "select_files", Event::Files { files, .. }) => {
            let files = files.into_iter().map(File::from).collect::<Vec<_>>();
            files.into_pyobject(py)?.into_any().unbind()
        }
        ("peers", Event::Peers { peers, .. }) => {
            let peers = peers.into_iter().map(Peer::from).collect::<Vec<_>>();
            peers.into_pyobject(py)?.into_any().unbind()
        }
        ("add_peers", Event::Peers { dialled, .. }) => {
            dialled.into_pyobject(py)?.into_any().unbind()
        }
        ("make", Event::TorrentMade { made, .. }) => Py::new(py, Made::new(py, made))?.into_any(),
        ("broker_info", Event::BrokerInfo { info, .. }) => {
            let others = info.patrons.saturating_sub(1);
            let text = patron_client::json::broker_json(&info, None, others).to_string();
            py.import("json")?.call_method1("loads", (text,))?.unbind()
        }
        ("stop_broker", Event::Ok { .. }) => py.None(),
        ("labels", Event::Labels { labels, .. }) => {
            let own = |limit: Option<SeedLimit<f64>>| -> Py<PyAny> {
                match limit {
                    None => py.None(),
                    Some(SeedLimit::Unlimited) => "none"
                        .into_pyobject(py)
                        .map(|o| o.into_any().unbind())
                        .unwrap_or_else(|_| py.None()),
                    Some(SeedLimit::At(v)) => v
                        .into_pyobject(py)
                        .map(|o| o.into_any().unbind())
                        .unwrap_or_else(|_| py.None()),
                }
            };
            let secs = |limit: Option<SeedLimit<u64>>| match limit {
                None => None,
                Some(SeedLimit::Unlimited) => Some(SeedLimit::Unlimited),
                Some(SeedLimit::At(s)) => Some(SeedLimit::At(s as f64)),
            };
            let list = PyList::empty(py);
            for label in labels {
                let dict = PyDict::new(py);
                dict.set_item("name", label.name)?;
                dict.set_item("folder", label.folder)?;
                dict.set_item("max_download_rate", label.limits.download)?;
                dict.set_item("max_upload_rate", label.limits.upload)?;
                dict.set_item("ratio_limit", own(label.seeding.ratio))?;
                dict.set_item(
                    "seed_time_limit_secs",
                    own(secs(label.seeding.seed_time_secs)),
                )?;
                dict.set_item("idle_seed_limit_secs", own(secs(label.seeding.idle_secs)))?;
                dict.set_item("torrents", label.torrents)?;
                list.append(dict)?;
            }
            list.into_any().unbind()
        }
        ("seeding", Event::Seeding { limits, action, .. }) => {
            let dict = PyDict::new(py);
            dict.set_item("ratio_limit", limits.ratio)?;
            dict.set_item("seed_time_limit_secs", limits.seed_time_secs)?;
            dict.set_item("idle_seed_limit_secs", limits.idle_secs)?;
            dict.set_item("seed_limit_action", action.as_str())?;
            dict.into_any().unbind()
        }
        ("queue", Event::Queue { queue, .. }) => {
            let dict = PyDict::new(py);
            dict.set_item("max_active_downloads", queue.max_active_downloads)?;
            dict.set_item("max_active_seeds", queue.max_active_seeds)?;
            dict.set_item("stalled_after_secs", queue.stalled_after_secs)?;
            dict.into_any().unbind()
        }
        ("queue_move", Event::Status { status, .. }) => {
            Py::new(py, Status::from_status(status))?.into_any()
        }
        ("limits", Event::Limits { limits, alt, .. }) => {
            let dict = PyDict::new(py);
            dict.set_item("max_download_rate", limits.download)?;
            dict.set_item("max_upload_rate", limits.upload)?;
            if let Some(alt) = alt {
                dict.set_item("alt_download_rate", alt.download)?;
                dict.set_item("alt_upload_rate", alt.upload)?;
                dict.set_item("alt_schedule", alt.schedule.map(|s| s.to_string()))?;
                dict.set_item("alt_hours", alt.hours.map(|s| s.to_string()))?;
                dict.set_item("alt_on", alt.on)?;
            }
            dict.into_any().unbind()
        }
        ("list_request", Event::TorrentList { torrents, .. }) => {
            let list = torrents
                .into_iter()
                .map(Status::from_summary)
                .collect::<Vec<_>>();
            list.into_pyobject(py)?.into_any().unbind()
        }
        (_, other) => return Err(unexpected(&other)),
    };
    Ok(value)
}

/// An event of `events()` as its Python object; `None` for one a program need not see.
pub fn event_object(py: Python<'_>, event: Event) -> PyResult<Option<Py<PyAny>>> {
    Ok(Some(match event {
        Event::TorrentStatusUpdate(status) => Py::new(
            py,
            StatusChanged {
                status: Py::new(py, Status::from_status(status))?,
            },
        )?
        .into_any(),
        Event::TorrentGone { id, reason } => {
            Py::new(py, TorrentGone { id: id.0, reason })?.into_any()
        }
        Event::BrokerStopping { reason } => Py::new(py, BrokerStopping { reason })?.into_any(),
        _ => return Ok(None),
    }))
}

#[pymethods]
impl Connection {
    /// Connects to the broker of `state_dir` (the default one when `None`), starting one
    /// if none runs and `autostart`. `resolve(future, value)` completes a future unless it
    /// was cancelled (called on the future's loop).
    #[new]
    #[pyo3(signature = (state_dir, autostart, resolve, timeout=None))]
    fn new(
        py: Python<'_>,
        state_dir: Option<PathBuf>,
        autostart: bool,
        resolve: Py<PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Connection> {
        let mut options = ConnectOptions {
            state_dir,
            auto_start: autostart,
            ..Default::default()
        };
        // Handshakes and board requests (this one, and every later stream's, side
        // connection's and board's) answer within the patron's timeout too.
        if let Some(bound) = deadline(timeout)?.map(|d| d.saturating_duration_since(Instant::now()))
        {
            options.timeout = options.timeout.min(bound);
        }
        let core = interruptible(
            py,
            move || Core::connect(options, resolve),
            |core| core.close(),
        )?
        .map_err(|e| errors::from_client(py, e))?;
        Ok(Connection {
            core,
            board: Mutex::new(None),
            idle_boards: Mutex::default(),
            timeout,
        })
    }

    #[getter]
    fn broker_pid(&self) -> u32 {
        self.core.broker_pid
    }

    #[getter]
    fn patron_id(&self) -> u64 {
        self.core.patron_id
    }

    #[getter]
    fn closed(&self) -> bool {
        self.core.ended().is_some()
    }

    /// Sends a request and waits for its reply, asleep with the GIL released, up to
    /// `timeout` seconds (`WaitTimeout`; the reply is then dropped when it comes); Ctrl-C
    /// (any signal handler that raises) interrupts the wait.
    #[pyo3(signature = (method, args, timeout=None))]
    fn call(
        &self,
        py: Python<'_>,
        method: &str,
        args: &Bound<'_, PyDict>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        self.check_open(py)?;
        let deadline = deadline(timeout)?;
        let body = request(method, args)?;
        let (id, slot) =
            crate::detach(py, || self.core.send(body)).map_err(|f| errors::from_failure(py, f))?;
        let reply = sliced(py, deadline, |slice| {
            Ok(crate::detach(py, || Core::wait_slot(&slot, slice)))
        });
        match reply {
            Ok(Some(reply)) => decode(py, method, reply),
            Ok(None) => {
                self.core.forget(id);
                Err(errors::error(
                    py,
                    "WaitTimeout",
                    "timeout",
                    &format!(
                        "the broker did not answer {method} within {} s",
                        seconds(timeout.unwrap_or(0.0))
                    ),
                ))
            }
            Err(interrupted) => {
                self.core.forget(id);
                Err(interrupted)
            }
        }
    }

    /// Sends a request whose reply resolves `future` on `event_loop`; then `decode` it.
    fn call_async(
        &self,
        py: Python<'_>,
        method: &str,
        args: &Bound<'_, PyDict>,
        future: Py<PyAny>,
        event_loop: Py<PyAny>,
    ) -> PyResult<()> {
        self.check_process(py)?;
        let body = request(method, args)?;
        crate::detach(py, || self.core.send_async(body, future, event_loop))
            .map(drop)
            .map_err(|f| errors::from_failure(py, f))
    }

    /// The value of a reply an async call got.
    fn decode(
        &self,
        py: Python<'_>,
        method: &str,
        reply: &Bound<'_, Reply>,
    ) -> PyResult<Py<PyAny>> {
        let taken = lock(&reply.get().0).take();
        match taken {
            Some(reply) => decode(py, method, reply),
            None => Err(errors::error(
                py,
                "ProtocolError",
                "protocol",
                "a reply decoded twice",
            )),
        }
    }

    /// Every torrent on the board, in id order, with no request (the broker is asked only
    /// when the board cut a long text, so that every field is whole).
    #[pyo3(signature = (ask=true))]
    fn list(&self, py: Python<'_>, ask: bool) -> PyResult<Option<Py<PyList>>> {
        self.check_open(py)?;
        let exact = self.with_board(py, |board| board.list_exact())?;
        let summaries = match exact {
            Some(list) => list,
            None if !ask => return Ok(None),
            None => {
                let list = self.call(py, "list_request", &PyDict::new(py), self.timeout)?;
                return Ok(Some(list.bind(py).cast::<PyList>()?.clone().unbind()));
            }
        };
        let list = PyList::empty(py);
        for summary in summaries {
            list.append(Py::new(py, Status::from_summary(summary))?)?;
        }
        Ok(Some(list.unbind()))
    }

    /// One torrent's status off the board, with no request. Where a text on the board was
    /// cut to fit its slot, the broker is asked for it whole, unless `ask` is false: then
    /// `None` (an event loop asks without blocking).
    #[pyo3(signature = (torrent, ask=true))]
    fn status(
        &self,
        py: Python<'_>,
        torrent: &Bound<'_, PyAny>,
        ask: bool,
    ) -> PyResult<Option<Py<Status>>> {
        self.check_open(py)?;
        let torrent = torrent_ref(torrent)?;
        let found = self.with_board(py, |board| board.summary_whole(torrent))?;
        match found {
            Some((summary, true)) => Py::new(py, Status::from_summary(summary)).map(Some),
            Some((_, false)) if !ask => Ok(None),
            // A text on the board was cut to fit its slot: the broker says it whole.
            Some((summary, false)) => {
                let list = self.call(py, "list_request", &PyDict::new(py), self.timeout)?;
                for status in list.bind(py).cast::<PyList>()?.iter() {
                    let status = status.cast_into::<Status>()?;
                    if status.get().inner().id == summary.info.id {
                        return Ok(Some(status.unbind()));
                    }
                }
                Py::new(py, Status::from_summary(summary)).map(Some)
            }
            None => Err(errors::error(
                py,
                "UnknownTorrent",
                "unknown-torrent",
                &format!("no torrent {torrent} on the board"),
            )),
        }
    }

    /// Waits until `torrent` is complete (its status then), asleep on the board with the GIL
    /// released. Raises `TimeoutError` after `timeout` seconds, `TorrentFailed` when the
    /// torrent stops with an error, `UnknownTorrent` when it goes.
    #[pyo3(signature = (torrent, timeout=None))]
    fn wait(
        &self,
        py: Python<'_>,
        torrent: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Py<Status>> {
        self.check_open(py)?;
        let torrent = torrent_ref(torrent)?;
        let deadline = deadline(timeout)?;
        let mut board = self.take_board(py, deadline)?;
        let outcome = sliced(py, deadline, |slice| {
            self.check_open(py)?;
            let summary = board
                .refresh()
                .map(|()| board.summary(torrent))
                .map_err(|e| errors::from_client(py, e))?;
            match summary {
                Some(s) if s.status.complete => return Ok(Some(s)),
                Some(s) => {
                    if let TorrentState::Error(why) = &s.status.state {
                        return Err(errors::error(py, "TorrentFailed", "torrent-failed", why));
                    }
                }
                None => {
                    return Err(errors::error(
                        py,
                        "UnknownTorrent",
                        "unknown-torrent",
                        &format!("no torrent {torrent} on the board (closed?)"),
                    ))
                }
            }
            crate::detach(py, || board.wait_for_change(slice))
                .map(|_| None)
                .map_err(|e| errors::from_client(py, e))
        });
        self.give_back(board);
        match outcome? {
            Some(summary) => Py::new(py, Status::from_summary(summary)),
            None => Err(errors::error(
                py,
                "WaitTimeout",
                "timeout",
                &format!(
                    "torrent {torrent} is not complete after {} s",
                    seconds(timeout.unwrap_or(0.0))
                ),
            )),
        }
    }

    /// Waits up to `timeout` seconds (`None`: for ever) for the board to change; returns
    /// whether it did.
    #[pyo3(signature = (timeout=None))]
    fn wait_for_change(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        self.check_open(py)?;
        let deadline = deadline(timeout)?;
        let mut board = self.take_board(py, deadline)?;
        let outcome = sliced(py, deadline, |slice| {
            self.check_open(py)?;
            match crate::detach(py, || board.wait_for_change(slice)) {
                Ok(true) => Ok(Some(())),
                Ok(false) => Ok(None),
                Err(e) => Err(errors::from_client(py, e)),
            }
        });
        self.give_back(board);
        Ok(outcome?.is_some())
    }

    /// The next event (`StatusChanged`, `TorrentGone`, `BrokerStopping`), waiting up to
    /// `timeout` seconds (`None`: for ever); `None` when the time passed. Raises once the
    /// connection ended and every event was read.
    #[pyo3(signature = (timeout=None))]
    fn next_event(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        self.check_process(py)?;
        sliced(py, deadline(timeout)?, |slice| {
            match crate::detach(py, || self.core.next_event(slice)) {
                // An event a program need not see is passed over.
                Ok(Some(event)) => event_object(py, event),
                Ok(None) => Ok(None),
                Err(failure) => Err(errors::from_failure(py, failure)),
            }
        })
    }

    /// The next event if one is queued; else `None`, and `future` is resolved (on
    /// `event_loop`) when one arrives or the connection ends.
    fn next_event_or_wake(
        &self,
        py: Python<'_>,
        future: Py<PyAny>,
        event_loop: Py<PyAny>,
    ) -> PyResult<Option<Py<PyAny>>> {
        self.check_process(py)?;
        loop {
            let next = self
                .core
                .next_event_or_wake(future.clone_ref(py), event_loop.clone_ref(py));
            match next {
                Ok(Some(event)) => {
                    if let Some(object) = event_object(py, event)? {
                        return Ok(Some(object));
                    }
                }
                Ok(None) => return Ok(None),
                Err(failure) => return Err(errors::from_failure(py, failure)),
            }
        }
    }

    /// Closes the connection; the broker releases what it held (ephemeral torrents close).
    fn close(&self, py: Python<'_>) {
        // A forked child closes nothing: the connection is its parent's.
        if std::process::id() == self.core.owner_pid {
            crate::detach(py, || {
                self.core.close();
                lock(&self.idle_boards).clear();
                *lock(&self.board) = None;
            });
        }
    }

    /// A connection of its own for one slow request (a magnet's add waits for metadata, a
    /// make hashes a folder): the broker answers one patron's requests in order, so on
    /// this connection it would hold up every other thread's. Closed when this one is.
    #[pyo3(signature = (timeout=None))]
    fn aside(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Connection> {
        self.check_open(py)?;
        let mut options = self.bounded(deadline(timeout)?);
        // Beside a connection that runs: a broker gone meanwhile is not started again.
        options.auto_start = false;
        let resolve = self.core.resolver(py);
        let core = interruptible(
            py,
            move || Core::connect(options, resolve),
            |core| core.close(),
        )?
        .map_err(|e| errors::from_client(py, e))?;
        if !self.core.adopt(&core) {
            return Err(errors::from_failure(py, Failure::closed()));
        }
        Ok(Connection {
            core,
            board: Mutex::new(None),
            idle_boards: Mutex::default(),
            timeout: self.timeout,
        })
    }

    /// Maps the board for reads now (an event loop does it in an executor, since it asks
    /// the broker), so that later reads are a few loads.
    fn map_board(&self, py: Python<'_>) -> PyResult<()> {
        self.with_board(py, |_| ())
    }

    /// A board of its own for an event loop to watch.
    #[pyo3(signature = (timeout=None))]
    fn board_watch(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<BoardWatch> {
        self.check_open(py)?;
        let mut board = self.open_board(py, deadline(timeout)?)?;
        board.change_fd();
        let _ = board.changed();
        Ok(BoardWatch {
            board: Mutex::new(Some(board)),
            owner_pid: self.core.owner_pid,
        })
    }

    /// Opens a stream of `file` (the only file when `None`) of `torrent` at `offset`.
    #[pyo3(signature = (torrent, file=None, offset=0))]
    fn open_stream(
        &self,
        py: Python<'_>,
        torrent: &Bound<'_, PyAny>,
        file: Option<&Bound<'_, PyAny>>,
        offset: u64,
    ) -> PyResult<crate::stream::Stream> {
        self.check_open(py)?;
        let torrent = torrent_ref(torrent)?;
        let file = file.map(file_ref).transpose()?;
        let options = self.core.options.clone();
        let stream = interruptible(
            py,
            move || patron_client::Stream::open(&options, torrent, file, offset),
            drop,
        )?
        .map_err(|e| errors::from_client(py, e))?;
        Ok(crate::stream::Stream::new(stream))
    }
}

/// The board watched by an event loop: `fd` becomes readable when it changes.
#[pyclass(frozen, module = "torrent_patron._native")]
pub struct BoardWatch {
    /// `None` once closed.
    board: Mutex<Option<Board>>,
    owner_pid: u32,
}

#[pymethods]
impl BoardWatch {
    /// The descriptor to watch for reading, if the broker took a waker (else poll).
    #[getter]
    fn fd(&self, py: Python<'_>) -> PyResult<Option<i32>> {
        errors::check_owner(py, self.owner_pid, "board watch")?;
        // Registering a waker talks to the broker: never with the GIL held.
        Ok(crate::detach(py, || {
            lock(&self.board).as_mut().and_then(Board::change_fd)
        }))
    }

    /// Whether the board changed since the last look; clears the wake-up.
    fn changed(&self, py: Python<'_>) -> PyResult<bool> {
        errors::check_owner(py, self.owner_pid, "board watch")?;
        // A broker that restarted is looked up again: never with the GIL held.
        match crate::detach(py, || lock(&self.board).as_mut().map(Board::changed)) {
            Some(changed) => changed.map_err(|e| errors::from_client(py, e)),
            None => Err(errors::from_failure(py, Failure::closed())),
        }
    }

    /// Lets the board go now (its mapping, and the broker's waiter for it), not when the
    /// object is collected.
    fn close(&self, py: Python<'_>) {
        if std::process::id() == self.owner_pid {
            crate::detach(py, || drop(lock(&self.board).take()));
        }
    }
}

impl Drop for Connection {
    /// A patron nobody holds any more closes: the broker releases what it held. Off this
    /// thread (which may hold the GIL): the close sends a last request.
    fn drop(&mut self) {
        if std::process::id() != self.core.owner_pid || self.core.ended().is_some() {
            return;
        }
        let core = Arc::clone(&self.core);
        let _ = std::thread::Builder::new()
            .name("torrent-patron-close".into())
            .spawn(move || core.close());
    }
}

impl Connection {
    /// A forked child may not use its parent's connection: the broker would see two
    /// processes' requests as one patron's, and their replies would go to either.
    fn check_process(&self, py: Python<'_>) -> PyResult<()> {
        errors::check_owner(py, self.core.owner_pid, "Patron")
    }

    /// Runs `read` on the reading board, mapping it first (and again after the broker
    /// restarted or outgrew it).
    ///
    /// The board's lock is only taken with the GIL released: a thread holding the GIL never
    /// waits for it (one mapping the board, or refreshing it after a restart, takes a
    /// while, and would otherwise hold every Python thread).
    fn with_board<T: Send>(
        &self,
        py: Python<'_>,
        read: impl FnOnce(&Board) -> T + Send,
    ) -> PyResult<T> {
        if crate::detach(py, || lock(&self.board).is_none()) {
            let opened = self.open_board(py, None)?;
            crate::detach(py, || {
                lock(&self.board).get_or_insert(opened);
            });
        }
        let options = &self.core.options;
        crate::detach(py, || {
            let mut board = lock(&self.board);
            let open = match board.as_mut() {
                Some(open) => open,
                None => board.insert(Board::open(options)?),
            };
            if let Err(e) = open.refresh() {
                *board = None;
                return Err(e);
            }
            Ok(read(open))
        })
        .map_err(|e| errors::from_client(py, e))
    }

    /// Maps the broker's board (asking the broker for it) on a thread of its own, so that
    /// Ctrl-C ends the wait at once (the signal would otherwise break the request).
    fn open_board(&self, py: Python<'_>, deadline: Option<Instant>) -> PyResult<Board> {
        let options = self.bounded(deadline);
        interruptible(py, move || Board::open(&options), drop)?
            .map_err(|e| errors::from_client(py, e))
    }

    /// `PatronClosed` once this patron is closed (or its broker went).
    fn check_open(&self, py: Python<'_>) -> PyResult<()> {
        self.check_process(py)?;
        match self.core.ended() {
            Some(failure) => Err(errors::from_failure(py, failure)),
            None => Ok(()),
        }
    }

    /// Gives back a board a wait used: kept for the next wait, a few at most (each is a
    /// mapping and one of the broker's waiters).
    fn give_back(&self, board: Board) {
        let mut idle = lock(&self.idle_boards);
        if idle.len() < IDLE_BOARDS && self.core.ended().is_none() {
            idle.push(board);
        }
    }

    /// A board to wait on: an idle one, or a new mapping.
    fn take_board(&self, py: Python<'_>, deadline: Option<Instant>) -> PyResult<Board> {
        match lock(&self.idle_boards).pop() {
            Some(board) => Ok(board),
            None => self.open_board(py, deadline),
        }
    }

    /// The connection options, their handshake bounded by a call's `deadline` too.
    fn bounded(&self, deadline: Option<Instant>) -> ConnectOptions {
        let mut options = self.core.options.clone();
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            // A handshake of no time at all could not even be tried.
            options.timeout = options.timeout.min(left.max(Duration::from_millis(1)));
        }
        options
    }
}
