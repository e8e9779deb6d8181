//! Rate limits changed while the broker runs (`SetLimits`): its own for all torrents, or
//! one torrent's. Recorded first (`settings.json`, see [`crate::settings`]; or the
//! torrent's record), then applied, so a restart keeps what the user set and a record that
//! cannot be written changes nothing.

use super::Service;
use crate::engine;
use crate::settings::RunSettings;
use proto::{ProtoError, RateLimits, SetLimits, TorrentRef};
use std::num::NonZeroU32;

impl Service {
    /// Sets the limits `change` names (`0`: none) and returns those in force; with nothing
    /// to change, only returns them.
    pub fn set_limits(&self, change: SetLimits) -> Result<RateLimits, ProtoError> {
        let download = change.download.map(|r| rate(r, "download")).transpose()?;
        let upload = change.upload.map(|r| rate(r, "upload")).transpose()?;
        if let Some(torrent) = change.torrent {
            return self.set_torrent_limits(torrent, download, upload);
        }
        if download.is_none() && upload.is_none() {
            return Ok(self.engine.limits());
        }
        // One change at a time: each writes the whole record.
        let mut recorded = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let next = RunSettings {
            max_download_rate: change.download.or(recorded.max_download_rate),
            max_upload_rate: change.upload.or(recorded.max_upload_rate),
            ..*recorded
        };
        next.save(&self.config.state_dir).map_err(|e| {
            ProtoError::io(format!(
                "cannot record the limits in {} ({e}): nothing changed",
                RunSettings::path(&self.config.state_dir).display()
            ))
        })?;
        *recorded = next;
        self.engine.set_limits(download, upload);
        let limits = self.engine.limits();
        tracing::info!(download = ?limits.download, upload = ?limits.upload, "global rate limits set");
        Ok(limits)
    }

    /// One running torrent's own limits: recorded with it (a restart keeps them), then
    /// set on it, from its next chunk on (`None`: unchanged; `Some(None)`: lifted).
    fn set_torrent_limits(
        &self,
        torrent: TorrentRef,
        download: Option<Option<NonZeroU32>>,
        upload: Option<Option<NonZeroU32>>,
    ) -> Result<RateLimits, ProtoError> {
        let (id, handle) = self.running(torrent)?;
        if download.is_some() || upload.is_some() {
            self.update_record(id, |restore| {
                if let Some(download) = download {
                    restore.rates.download = download;
                }
                if let Some(upload) = upload {
                    restore.rates.upload = upload;
                }
            })?;
            engine::set_torrent_limits(&handle, download, upload);
            tracing::info!(torrent = %id, ?download, ?upload, "the torrent's rate limits set");
        }
        Ok(engine::torrent_limits(&handle))
    }
}

/// A limit the engine can keep: `0` is none, else 1 to `u32::MAX` bytes a second.
fn rate(bytes_per_second: u64, direction: &str) -> Result<Option<NonZeroU32>, ProtoError> {
    if bytes_per_second == 0 {
        return Ok(None);
    }
    u32::try_from(bytes_per_second)
        .ok()
        .and_then(NonZeroU32::new)
        .map(Some)
        .ok_or_else(|| {
            ProtoError::bad_request(format!(
                "a {direction} limit of {bytes_per_second} bytes a second is more than the engine's largest (4 GiB/s); 0 lifts the limit"
            ))
        })
}
