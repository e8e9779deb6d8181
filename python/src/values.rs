//! What the API hands back: frozen objects with the fields `--json` prints, named alike.
//!
//! A `Status` keeps the board's Rust value and makes a field's Python object only when the
//! field is read: `list()` of 10,000 torrents makes 10,000 small objects, not 180,000.
//!
//! Every class pickles (for `multiprocessing`, caches): it reduces to `_native._restore`
//! with its name and its fields in postcard, from the same serde description that gives
//! the plain classes their `as_dict`.

use patron_client::proto::{
    FileEntry, MadeTorrent, PeerEntry, TorrentInfo, TorrentState, TorrentStatus, TorrentSummary,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use serde::{Deserialize, Serialize};

/// What `__reduce__` gives: `_restore` and its arguments.
type Reduced = (Py<PyAny>, (&'static str, Py<PyBytes>));

/// `(_restore, (class, fields))` for pickle.
fn reduce<T: Serialize>(py: Python<'_>, class: &'static str, value: &T) -> PyResult<Reduced> {
    let fields = postcard::to_stdvec(value).map_err(|e| {
        pyo3::exceptions::PyValueError::new_err(format!("cannot pickle {class}: {e}"))
    })?;
    let restore = py
        .import("torrent_patron._native")?
        .getattr("_restore")?
        .unbind();
    Ok((restore, (class, PyBytes::new(py, &fields).unbind())))
}

/// The fields as a dict, named as `--json` names them.
fn dict_of<'py, T: Serialize>(py: Python<'py>, value: &T) -> PyResult<Bound<'py, PyDict>> {
    let text = serde_json::to_string(value)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    Ok(py
        .import("json")?
        .call_method1("loads", (text,))?
        .cast_into::<PyDict>()?)
}

/// Makes a pickled value again (`__reduce__`'s function).
#[pyfunction]
pub fn _restore(py: Python<'_>, class: &str, fields: &[u8]) -> PyResult<Py<PyAny>> {
    fn read<'a, T: Deserialize<'a>>(class: &str, fields: &'a [u8]) -> PyResult<T> {
        postcard::from_bytes(fields).map_err(|e| {
            pyo3::exceptions::PyValueError::new_err(format!("not a pickled {class}: {e}"))
        })
    }
    Ok(match class {
        "Status" => Py::new(py, read::<Status>(class, fields)?)?.into_any(),
        "Added" => Py::new(py, read::<Added>(class, fields)?)?.into_any(),
        "Closed" => Py::new(py, read::<Closed>(class, fields)?)?.into_any(),
        "File" => Py::new(py, read::<File>(class, fields)?)?.into_any(),
        "Peer" => Py::new(py, read::<Peer>(class, fields)?)?.into_any(),
        "Made" => Py::new(py, Made::from_fields(py, read(class, fields)?))?.into_any(),
        "StatusChanged" => {
            let status = Py::new(py, read::<Status>(class, fields)?)?;
            Py::new(py, StatusChanged { status })?.into_any()
        }
        "TorrentGone" => Py::new(py, read::<TorrentGone>(class, fields)?)?.into_any(),
        "BrokerStopping" => Py::new(py, read::<BrokerStopping>(class, fields)?)?.into_any(),
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "torrent_patron has no value class {other}"
            )))
        }
    })
}

/// A string as Python's `repr` writes it (`'name'`).
fn r(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A bool as Python writes it.
fn b(value: bool) -> &'static str {
    if value {
        "True"
    } else {
        "False"
    }
}

/// An optional value as Python writes it.
fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "None".into(), |v| v.to_string())
}

/// One torrent's status, as `status --json` prints it (and `list --json`, which adds
/// `save_folder`, `holders` and `ephemeral`; those are `None` on a status that came in an
/// event).
#[pyclass(frozen, module = "torrent_patron", eq)]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    status: TorrentStatus,
    save_folder: Option<String>,
    holders: Option<u32>,
    ephemeral: Option<bool>,
}

impl Status {
    pub fn from_summary(summary: TorrentSummary) -> Status {
        Status {
            status: summary.status,
            save_folder: Some(summary.info.save_folder),
            holders: Some(summary.holders),
            ephemeral: Some(summary.ephemeral),
        }
    }

    pub fn from_status(status: TorrentStatus) -> Status {
        Status {
            status,
            save_folder: None,
            holders: None,
            ephemeral: None,
        }
    }

    pub fn inner(&self) -> &TorrentStatus {
        &self.status
    }
}

/// The fields, in `--json`'s order.
const STATUS_FIELDS: [&str; 26] = [
    "id",
    "info_hash",
    "name",
    "state",
    "error",
    "progress",
    "bytes_done",
    "bytes_total",
    "download_rate",
    "upload_rate",
    "uploaded",
    "peers",
    "seeds",
    "eta_secs",
    "complete",
    "queue_position",
    "downloaded",
    "ratio",
    "seeding_secs",
    "ratio_limit",
    "seed_time_limit_secs",
    "idle_seed_limit_secs",
    "labels",
    "save_folder",
    "holders",
    "ephemeral",
];

#[pymethods]
impl Status {
    /// The broker's number for the torrent.
    #[getter]
    fn id(&self) -> u64 {
        self.status.id.0
    }
    /// The info hash, 40 hex digits.
    #[getter]
    fn info_hash(&self) -> String {
        self.status.info_hash.to_string()
    }
    #[getter]
    fn name(&self) -> &str {
        &self.status.name
    }
    /// `checking`, `resolving-metadata`, `downloading`, `seeding`, `paused` or `error`.
    #[getter]
    fn state(&self) -> &'static str {
        self.status.state.as_str()
    }
    /// Why the torrent stopped, when `state` is `error`.
    #[getter]
    fn error(&self) -> Option<&str> {
        match &self.status.state {
            TorrentState::Error(why) => Some(why),
            _ => None,
        }
    }
    /// 0.0 to 1.0 of the chosen files' bytes.
    #[getter]
    fn progress(&self) -> f64 {
        self.status.progress
    }
    #[getter]
    fn bytes_done(&self) -> u64 {
        self.status.bytes_done
    }
    #[getter]
    fn bytes_total(&self) -> u64 {
        self.status.bytes_total
    }
    /// Bytes a second.
    #[getter]
    fn download_rate(&self) -> u64 {
        self.status.download_rate
    }
    /// Bytes a second.
    #[getter]
    fn upload_rate(&self) -> u64 {
        self.status.upload_rate
    }
    /// Bytes uploaded, in all (counted across pauses and restarts).
    #[getter]
    fn uploaded(&self) -> u64 {
        self.status.uploaded
    }
    #[getter]
    fn peers(&self) -> u32 {
        self.status.peers
    }
    #[getter]
    fn seeds(&self) -> u32 {
        self.status.seeds
    }
    /// Seconds until complete at the current rate, if known.
    #[getter]
    fn eta_secs(&self) -> Option<u64> {
        self.status.eta_secs
    }
    /// Every chosen file is downloaded and verified.
    #[getter]
    fn complete(&self) -> bool {
        self.status.complete
    }
    /// Bytes downloaded, in all.
    #[getter]
    fn downloaded(&self) -> u64 {
        self.status.downloaded
    }
    /// Uploaded over downloaded (over its size, for what it never downloaded).
    #[getter]
    fn ratio(&self) -> f64 {
        self.status.ratio()
    }
    /// Seconds seeded, in all.
    #[getter]
    fn seeding_secs(&self) -> u64 {
        self.status.seeding_secs
    }
    /// The ratio at which it stops seeding (`None`: none).
    #[getter]
    fn ratio_limit(&self) -> Option<f64> {
        self.status.seed_limits.ratio
    }
    /// The seconds of seeding after which it stops (`None`: none).
    #[getter]
    fn seed_time_limit_secs(&self) -> Option<u64> {
        self.status.seed_limits.seed_time_secs
    }
    /// The seconds idle after which it stops seeding (`None`: none).
    #[getter]
    fn idle_seed_limit_secs(&self) -> Option<u64> {
        self.status.seed_limits.idle_secs
    }
    /// Its place in the broker's queue, 1 first (queued torrents start in this order).
    #[getter]
    fn queue_position(&self) -> Option<u32> {
        self.status.queue_position
    }
    /// Its labels.
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.status.labels.clone()
    }
    /// Where the torrent's files are (the folder its name goes in).
    #[getter]
    fn save_folder(&self) -> Option<&str> {
        self.save_folder.as_deref()
    }
    /// How many patrons hold the torrent.
    #[getter]
    fn holders(&self) -> Option<u32> {
        self.holders
    }
    /// Whether it closes when its last holder goes.
    #[getter]
    fn ephemeral(&self) -> Option<bool> {
        self.ephemeral
    }

    #[classattr]
    fn __match_args__() -> (&'static str, &'static str, &'static str) {
        ("id", "name", "state")
    }

    /// The fields as a dict, as `--json` prints them.
    fn as_dict<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(slf.py());
        for field in STATUS_FIELDS {
            dict.set_item(field, slf.getattr(field)?)?;
        }
        Ok(dict)
    }

    fn __reduce__(&self, py: Python<'_>) -> PyResult<Reduced> {
        reduce(py, "Status", self)
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.status.id.0.hash(&mut hasher);
        self.status.bytes_done.hash(&mut hasher);
        self.status.state.as_str().hash(&mut hasher);
        hasher.finish()
    }

    fn __repr__(&self) -> String {
        format!(
            "Status(id={}, name={}, state={}, progress={:.3}, complete={})",
            self.status.id.0,
            r(&self.status.name),
            r(self.status.state.as_str()),
            self.status.progress,
            b(self.status.complete)
        )
    }
}

/// A torrent added, or joined when it already ran (`joined`).
#[pyclass(frozen, module = "torrent_patron", get_all, eq)]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Added {
    pub id: u64,
    pub info_hash: String,
    pub name: String,
    /// The folder its files are in.
    pub save_path: String,
    pub total_bytes: u64,
    /// It ran already (this patron now holds it too); what was asked differently was not
    /// applied.
    pub joined: bool,
    /// The options of the add that a running torrent did not take (when `joined`).
    pub not_applied: Vec<String>,
    /// It waits in the broker's queue for its turn (its downloads were all taken).
    pub queued: bool,
}

impl Added {
    pub fn new(info: TorrentInfo, joined: bool, not_applied: Vec<String>, queued: bool) -> Added {
        Added {
            id: info.id.0,
            info_hash: info.info_hash.to_string(),
            name: info.name,
            save_path: info.save_folder,
            total_bytes: info.total_bytes,
            joined,
            not_applied,
            queued,
        }
    }
}

#[pymethods]
impl Added {
    /// The folder its files are in (`save_path`), named as `Status` names it.
    #[getter]
    fn save_folder(&self) -> &str {
        &self.save_path
    }

    /// The fields as a dict.
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        dict_of(py, self)
    }

    fn __reduce__(&self, py: Python<'_>) -> PyResult<Reduced> {
        reduce(py, "Added", self)
    }

    fn __repr__(&self) -> String {
        format!(
            "Added(id={}, name={}, save_path={}, joined={})",
            self.id,
            r(&self.name),
            r(&self.save_path),
            b(self.joined)
        )
    }
}

/// What a close did.
#[pyclass(frozen, module = "torrent_patron", get_all, eq)]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Closed {
    pub id: u64,
    /// The torrent stopped (no other patron held it, or `force`).
    pub stopped: bool,
    pub data_deleted: bool,
}

#[pymethods]
impl Closed {
    /// The fields as a dict.
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        dict_of(py, self)
    }

    fn __reduce__(&self, py: Python<'_>) -> PyResult<Reduced> {
        reduce(py, "Closed", self)
    }

    fn __repr__(&self) -> String {
        format!(
            "Closed(id={}, stopped={}, data_deleted={})",
            self.id,
            b(self.stopped),
            b(self.data_deleted)
        )
    }
}

/// One file of a torrent, as `files --json` lists it.
#[pyclass(frozen, module = "torrent_patron", get_all, eq)]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct File {
    pub index: u32,
    /// Its path inside the torrent, `/`-separated.
    pub path: String,
    pub size: u64,
    pub bytes_done: u64,
    /// Chosen for download.
    pub selected: bool,
}

impl From<FileEntry> for File {
    fn from(f: FileEntry) -> File {
        File {
            index: f.index,
            path: f.path,
            size: f.size,
            bytes_done: f.bytes_done,
            selected: f.selected,
        }
    }
}

#[pymethods]
impl File {
    /// The fields as a dict, as `files --json` prints them.
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        dict_of(py, self)
    }

    fn __reduce__(&self, py: Python<'_>) -> PyResult<Reduced> {
        reduce(py, "File", self)
    }

    fn __repr__(&self) -> String {
        format!(
            "File(index={}, path={}, size={}, selected={})",
            self.index,
            r(&self.path),
            self.size,
            b(self.selected)
        )
    }
}

/// One connected peer, as `peers --json` lists it.
#[pyclass(frozen, module = "torrent_patron", get_all, eq)]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    /// `HOST:PORT`.
    pub address: String,
    pub client: Option<String>,
    pub incoming: bool,
    pub download_rate: u64,
    pub upload_rate: u64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub progress: Option<f64>,
}

impl From<PeerEntry> for Peer {
    fn from(p: PeerEntry) -> Peer {
        Peer {
            address: p.address,
            client: p.client,
            incoming: p.incoming,
            download_rate: p.download_rate,
            upload_rate: p.upload_rate,
            downloaded: p.downloaded,
            uploaded: p.uploaded,
            progress: p.progress,
        }
    }
}

#[pymethods]
impl Peer {
    /// The fields as a dict, as `peers --json` prints them.
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        dict_of(py, self)
    }

    fn __reduce__(&self, py: Python<'_>) -> PyResult<Reduced> {
        reduce(py, "Peer", self)
    }

    fn __repr__(&self) -> String {
        format!(
            "Peer(address={}, client={})",
            r(&self.address),
            opt(self.client.as_deref().map(r))
        )
    }
}

/// A torrent made from files (`make`).
#[pyclass(frozen, module = "torrent_patron", get_all)]
pub struct Made {
    pub info_hash: String,
    pub name: String,
    pub total_bytes: u64,
    pub pieces: u64,
    pub piece_size: u64,
    /// The .torrent file's bytes.
    pub torrent: Py<PyBytes>,
    /// The id it seeds under, when made with `seed=True`.
    pub seeding_id: Option<u64>,
}

impl Made {
    pub fn new(py: Python<'_>, made: MadeTorrent) -> Made {
        Made {
            info_hash: made.info_hash.to_string(),
            name: made.name,
            total_bytes: made.total_bytes,
            pieces: made.pieces,
            piece_size: made.piece_size,
            torrent: PyBytes::new(py, &made.torrent_file).unbind(),
            seeding_id: made.seeding.map(|s| s.id.0),
        }
    }
}

/// A `Made` as pickle keeps it.
#[derive(Serialize, Deserialize)]
pub struct MadeFields {
    info_hash: String,
    name: String,
    total_bytes: u64,
    pieces: u64,
    piece_size: u64,
    torrent: Vec<u8>,
    seeding_id: Option<u64>,
}

impl Made {
    fn from_fields(py: Python<'_>, made: MadeFields) -> Made {
        Made {
            info_hash: made.info_hash,
            name: made.name,
            total_bytes: made.total_bytes,
            pieces: made.pieces,
            piece_size: made.piece_size,
            torrent: PyBytes::new(py, &made.torrent).unbind(),
            seeding_id: made.seeding_id,
        }
    }
}

#[pymethods]
impl Made {
    fn __reduce__(&self, py: Python<'_>) -> PyResult<Reduced> {
        let fields = MadeFields {
            info_hash: self.info_hash.clone(),
            name: self.name.clone(),
            total_bytes: self.total_bytes,
            pieces: self.pieces,
            piece_size: self.piece_size,
            torrent: self.torrent.as_bytes(py).to_vec(),
            seeding_id: self.seeding_id,
        };
        reduce(py, "Made", &fields)
    }

    fn __repr__(&self) -> String {
        format!(
            "Made(info_hash={}, name={}, total_bytes={}, seeding_id={})",
            r(&self.info_hash),
            r(&self.name),
            self.total_bytes,
            opt(self.seeding_id)
        )
    }
}

/// A held torrent's status changed (`events()`).
#[pyclass(frozen, module = "torrent_patron", get_all)]
pub struct StatusChanged {
    pub status: Py<Status>,
}

#[pymethods]
impl StatusChanged {
    #[classattr]
    fn __match_args__() -> (&'static str,) {
        ("status",)
    }

    fn __reduce__(&self, py: Python<'_>) -> PyResult<Reduced> {
        reduce(py, "StatusChanged", self.status.get())
    }

    fn __repr__(&self) -> String {
        format!("StatusChanged({})", self.status.get().__repr__())
    }
}

/// A held torrent went: closed by another patron, or failed for good (`events()`).
#[pyclass(frozen, module = "torrent_patron", get_all)]
#[derive(Serialize, Deserialize)]
pub struct TorrentGone {
    pub id: u64,
    pub reason: String,
}

#[pymethods]
impl TorrentGone {
    #[classattr]
    fn __match_args__() -> (&'static str, &'static str) {
        ("id", "reason")
    }

    fn __reduce__(&self, py: Python<'_>) -> PyResult<Reduced> {
        reduce(py, "TorrentGone", self)
    }

    fn __repr__(&self) -> String {
        format!("TorrentGone(id={}, reason={})", self.id, r(&self.reason))
    }
}

/// The broker is stopping; no event follows (`events()`).
#[pyclass(frozen, module = "torrent_patron", get_all)]
#[derive(Serialize, Deserialize)]
pub struct BrokerStopping {
    pub reason: String,
}

#[pymethods]
impl BrokerStopping {
    #[classattr]
    fn __match_args__() -> (&'static str,) {
        ("reason",)
    }

    fn __reduce__(&self, py: Python<'_>) -> PyResult<Reduced> {
        reduce(py, "BrokerStopping", self)
    }

    fn __repr__(&self) -> String {
        format!("BrokerStopping(reason={})", r(&self.reason))
    }
}

/// Adds the classes to the module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Status>()?;
    module.add_class::<Added>()?;
    module.add_class::<Closed>()?;
    module.add_class::<File>()?;
    module.add_class::<Peer>()?;
    module.add_class::<Made>()?;
    module.add_class::<StatusChanged>()?;
    module.add_class::<TorrentGone>()?;
    module.add_class::<BrokerStopping>()?;
    module.add_function(wrap_pyfunction!(_restore, module)?)?;
    Ok(())
}
