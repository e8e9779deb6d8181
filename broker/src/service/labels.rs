//! Labels (DESIGN §13): names a torrent carries (`add --label`, `label ID L...`), and what a
//! label carries for its torrents (qBittorrent's categories): a save folder for adds that
//! name none, rate limits and seeding limits for torrents that have none of their own.
//!
//! A torrent's labels are recorded with it; what labels carry is recorded in
//! `<state dir>/labels.json`. Where a torrent's labels disagree, the first that has a
//! setting gives it. Limits are resolved, strongest first: the torrent's own, its labels',
//! the broker's.

use super::Service;
use crate::engine::{self, Rates};
use proto::{
    ConfigureLabel, LabelSettings, ProtoError, RateLimits, SetLabels, TorrentSeeding, TorrentStatus,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What one label carries, as recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<PathBuf>,
    #[serde(default)]
    pub rates: Rates,
    #[serde(default)]
    pub seeding: TorrentSeeding,
}

/// Every label's settings, by name.
pub type LabelBook = BTreeMap<String, LabelConfig>;

/// The broker's labels' settings, read by every status (a snapshot: an `Arc` swapped on
/// change, so readers never wait on a writer).
pub struct Labels {
    book: Mutex<Arc<LabelBook>>,
    path: PathBuf,
}

impl Labels {
    /// Reads `<state dir>/labels.json`: missing is none; unreadable refuses the start,
    /// naming it (DESIGN §4a).
    pub fn load(state_dir: &Path) -> Result<Labels, String> {
        let path = state_dir.join("labels.json");
        let book = match crate::store::read_state_file(&path) {
            Ok(Some(bytes)) => serde_json::from_slice::<LabelBook>(&bytes).map_err(|e| {
                format!(
                    "{} is not the broker's labels ({e}): fix it or move it aside",
                    path.display()
                )
            })?,
            Ok(None) => LabelBook::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if book.len() > proto::MAX_CONFIGURED_LABELS {
            return Err(format!(
                "{} has {} labels; the broker keeps settings for {} at most: fix it or move it aside",
                path.display(),
                book.len(),
                proto::MAX_CONFIGURED_LABELS
            ));
        }
        for (name, config) in &book {
            proto::valid_label(name).map_err(|why| format!("{}: {why}", path.display()))?;
            if config.folder.as_ref().is_some_and(|f| !f.is_absolute()) {
                return Err(format!(
                    "{}: label {name:?}'s folder is not an absolute path",
                    path.display()
                ));
            }
        }
        Ok(Labels {
            book: Mutex::new(Arc::new(book)),
            path,
        })
    }

    /// The settings now.
    pub fn book(&self) -> Arc<LabelBook> {
        self.book.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The first of `labels` whose settings have `pick`.
fn first<T>(
    book: &LabelBook,
    labels: &[String],
    pick: impl Fn(&LabelConfig) -> Option<T>,
) -> Option<T> {
    labels.iter().find_map(|l| book.get(l).and_then(&pick))
}

/// The seeding limits a torrent with `labels` gets where it has none of its own: its
/// labels', else `None` (the broker's).
pub fn label_seeding(book: &LabelBook, labels: &[String]) -> TorrentSeeding {
    TorrentSeeding {
        ratio: first(book, labels, |c| c.seeding.ratio),
        seed_time_secs: first(book, labels, |c| c.seeding.seed_time_secs),
        idle_secs: first(book, labels, |c| c.seeding.idle_secs),
    }
}

/// The rates a torrent runs at: its own, else its labels'.
pub fn rates_in_force(book: &LabelBook, labels: &[String], own: Rates) -> Rates {
    Rates {
        download: own
            .download
            .or_else(|| first(book, labels, |c| c.rates.download)),
        upload: own
            .upload
            .or_else(|| first(book, labels, |c| c.rates.upload)),
    }
}

/// The folder an add with `labels` and no folder of its own is saved in, if a label has one.
pub fn label_folder(book: &LabelBook, labels: &[String]) -> Option<PathBuf> {
    first(book, labels, |c| c.folder.clone())
}

fn set<T: Copy>(slot: &mut Option<T>, to: Option<Option<T>>) {
    if let Some(to) = to {
        *slot = to;
    }
}

impl Service {
    /// Gives a torrent its labels (replacing its old ones), recorded with it; the limits
    /// its labels carry apply from now on.
    pub fn set_labels(&self, change: SetLabels) -> Result<TorrentStatus, ProtoError> {
        proto::valid_labels(&change.labels).map_err(ProtoError::bad_request)?;
        // A dormant seed takes its labels' rates when it wakes.
        let (id, _) = self.running_or_dormant(change.torrent)?;
        let labels = change.labels;
        self.update_record(id, |r| r.labels = labels.clone())?;
        // Asked again once recorded: one woken meanwhile may have read the record before.
        if let Ok((_, Some(handle))) = self.running_or_dormant(proto::TorrentRef::Id(id)) {
            self.apply_label_rates(&[(id, handle)]);
        }
        self.sync_board(id);
        self.queue.nudge();
        tracing::info!(torrent = %id, ?labels, "labels set");
        self.current_status(id).ok_or_else(|| super::gone(id))
    }

    /// Changes what a label carries (recorded before it applies), or only tells; returns
    /// every label, configured or carried by a torrent.
    pub fn configure_label(
        &self,
        change: ConfigureLabel,
    ) -> Result<Vec<LabelSettings>, ProtoError> {
        if let Some(name) = &change.name {
            proto::valid_label(name).map_err(ProtoError::bad_request)?;
            let folder = match &change.folder {
                Some(Some(folder)) => Some(Some(self.save_folder(Some(folder))?)),
                Some(None) => Some(None),
                None => None,
            };
            let limit = |given: Option<Option<u64>>, name: &str| match given {
                Some(Some(bytes)) => super::add::rate(Some(bytes), name).map(Some),
                Some(None) => Ok(Some(None)),
                None => Ok(None),
            };
            let download = limit(change.download, "the download limit")?;
            let upload = limit(change.upload, "the upload limit")?;
            let seeding = &change.seeding;
            super::seeding::check_own(&TorrentSeeding {
                ratio: seeding.ratio.flatten(),
                seed_time_secs: seeding.seed_time_secs.flatten(),
                idle_secs: seeding.idle_secs.flatten(),
            })?;
            let mut guard = self.labels.book.lock().unwrap_or_else(|e| e.into_inner());
            let mut book = LabelBook::clone(&guard);
            if change.remove {
                book.remove(name);
            } else {
                if !book.contains_key(name) && book.len() >= proto::MAX_CONFIGURED_LABELS {
                    return Err(ProtoError::limit_reached(format!(
                        "the broker keeps settings for {} labels at most",
                        proto::MAX_CONFIGURED_LABELS
                    )));
                }
                let config = book.entry(name.clone()).or_default();
                if let Some(folder) = folder {
                    config.folder = folder;
                }
                set(&mut config.rates.download, download);
                set(&mut config.rates.upload, upload);
                set(&mut config.seeding.ratio, seeding.ratio);
                set(&mut config.seeding.seed_time_secs, seeding.seed_time_secs);
                set(&mut config.seeding.idle_secs, seeding.idle_secs);
            }
            let json = serde_json::to_vec_pretty(&book)
                .map_err(|e| ProtoError::io(format!("cannot encode the labels: {e}")))?;
            crate::store::write_atomically(&self.labels.path, &json).map_err(|e| {
                ProtoError::io(format!(
                    "the label is not changed: cannot save {}: {e}",
                    self.labels.path.display()
                ))
            })?;
            *guard = Arc::new(book);
            drop(guard);
            tracing::info!(label = %name, "label settings changed");
            // Its torrents' limits follow at once.
            let running: Vec<_> = {
                let mut state = self.state();
                let running: Vec<_> = state
                    .registry
                    .iter()
                    .filter(|(_, e)| e.restore.labels.contains(name))
                    .filter_map(|(id, e)| Some((*id, e.live_handle()?)))
                    .collect();
                // Their lines and their holders' events follow: the status loop looks.
                for (id, _) in &running {
                    state.registry.touch(*id);
                }
                running
            };
            self.apply_label_rates(&running);
            for (id, _) in &running {
                self.sync_board(*id);
            }
            self.status_nudge.notify_one();
            self.queue.nudge();
        }
        Ok(self.label_list())
    }

    /// Sets on each of `torrents` the rates in force for it (its own, else its labels').
    fn apply_label_rates(&self, torrents: &[(proto::TorrentId, engine::ManagedTorrentHandle)]) {
        let book = self.labels.book();
        for (id, handle) in torrents {
            let Some((labels, own)) = self
                .state()
                .registry
                .get(*id)
                .map(|e| (e.restore.labels.clone(), e.restore.rates))
            else {
                continue;
            };
            let rates = rates_in_force(&book, &labels, own);
            engine::set_torrent_limits(handle, Some(rates.download), Some(rates.upload));
        }
    }

    /// Every label the broker keeps settings for or a torrent carries, by name.
    pub fn label_list(&self) -> Vec<LabelSettings> {
        let book = self.labels.book();
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for (_, entry) in self.state().registry.iter() {
            for label in &entry.restore.labels {
                *counts.entry(label.clone()).or_default() += 1;
            }
        }
        for name in book.keys() {
            counts.entry(name.clone()).or_default();
        }
        counts
            .into_iter()
            .map(|(name, torrents)| {
                let config = book.get(&name).cloned().unwrap_or_default();
                LabelSettings {
                    folder: config.folder.map(|f| f.display().to_string()),
                    limits: RateLimits {
                        download: config.rates.download.map(|r| u64::from(r.get())),
                        upload: config.rates.upload.map(|r| u64::from(r.get())),
                    },
                    seeding: config.seeding,
                    torrents,
                    name,
                }
            })
            .collect()
    }

    /// What a torrent with `labels` runs at, given its own `rates`.
    pub(super) fn label_rates(&self, labels: &[String], rates: Rates) -> Rates {
        rates_in_force(&self.labels.book(), labels, rates)
    }

    /// What torrent `id` runs at as its record says now: its own rates, else its labels'.
    pub(super) fn recorded_rates(&self, id: proto::TorrentId) -> Option<Rates> {
        let (labels, rates) = self
            .state()
            .registry
            .get(id)
            .map(|e| (e.restore.labels.clone(), e.restore.rates))?;
        Some(self.label_rates(&labels, rates))
    }

    /// The folder an add with `labels` and no folder of its own goes to.
    pub(super) fn label_folder(&self, labels: &[String]) -> Option<PathBuf> {
        label_folder(&self.labels.book(), labels)
    }
}
