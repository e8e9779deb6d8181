//! A torrent's peers (`Peers`), after dialling any the patron names.

use super::{parse_peers, Service};
use proto::{BannedPeer, PeerEntry, PeersRequest, ProtoError, TorrentId};
use std::sync::Arc;
use std::time::Duration;

/// How long the peers' traffic is watched to tell their rates.
const RATE_WINDOW: Duration = Duration::from_millis(250);

impl Service {
    /// A torrent's connected peers, after dialling (and recording) any `request` names.
    pub async fn peers(
        self: &Arc<Self>,
        request: PeersRequest,
    ) -> Result<(TorrentId, Vec<String>, (Vec<PeerEntry>, Vec<BannedPeer>)), ProtoError> {
        let service = self;
        // A dormant seed has no peer: listing them wakes nothing (a poll of every torrent's
        // peers would keep them all in the engine).
        if request.add.is_empty() {
            if let Ok((id, crate::registry::Life::Dormant(_))) = service.life_of(request.torrent) {
                return Ok((id, Vec::new(), (Vec::new(), Vec::new())));
            }
        }
        let (id, handle) = service.live(request.torrent).await?;
        let mut dialled = Vec::new();
        if !request.add.is_empty() {
            let (loopback_only, own) = (service.config.loopback_only, service.engine.listen_addr());
            let peers = parse_peers(&request.add, loopback_only, own)?;
            // Nothing is done unless all of it can be: a paused or checking torrent dials nobody.
            service.engine.check_live(&handle)?;
            service.engine.refuse_banned(&handle, &peers)?;
            // Remembered first, so that a restart (or a resume) dials them too.
            service.remember_peers(id, &peers)?;
            dialled = service.engine.dial(&handle, &peers)?;
            tracing::info!(torrent = %id, dialled = dialled.len(), "peers added");
        }
        let peers = service.engine.peers(&handle, RATE_WINDOW).await?;
        let dialled = dialled.iter().map(|p| p.to_string()).collect();
        Ok((id, dialled, peers))
    }
}
