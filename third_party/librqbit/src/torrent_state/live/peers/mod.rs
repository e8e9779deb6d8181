use std::{collections::HashSet, net::SocketAddr, sync::Arc};

use dashmap::DashMap;
use librqbit_core::lengths::ValidPieceIndex;
use parking_lot::RwLock;

use crate::{
    Error,
    torrent_state::utils::{TimedExistence, atomic_inc},
    type_aliases::{BF, PeerHandle},
};

use self::stats::{AggregatePeerStats, AggregatePeerStatsAtomic};

use super::peer::{LivePeerState, Peer, PeerRx, PeerState, PeerTx};

pub mod stats;

pub(crate) struct PeerStates {
    pub session_stats: Arc<AggregatePeerStatsAtomic>,

    // This keeps track of live addresses we connected to, for PEX.
    pub live_outgoing_peers: RwLock<HashSet<PeerHandle>>,
    pub stats: AggregatePeerStatsAtomic,
    pub states: DashMap<PeerHandle, Peer>,
    // torrent-patron patch: told whenever a peer goes live, so that an idle torrent's
    // periodic work (the speed estimators) can sleep until then.
    pub peer_went_live: Arc<tokio::sync::watch::Sender<u64>>,
    // torrent-patron patch: the live state these peers are of, whose speed estimators a peer
    // going live starts (they stop once idle). Empty in tests of the peers alone.
    pub live: std::sync::Weak<super::TorrentStateLive>,
    // torrent-patron patch: peers banned for as long as the torrent runs (`ban`), with why.
    pub banned: parking_lot::Mutex<Vec<(SocketAddr, String)>>,
}

/// torrent-patron patch: the most peers a torrent knows of (libtorrent's default
/// max_peerlist_size is 3,000): trackers and DHT keep naming new ones for as long as it runs.
const MAX_KNOWN_PEERS: usize = 4096;

/// torrent-patron patch: the most peers a torrent keeps banned; past it the oldest ban goes.
const MAX_BANNED: usize = 256;

/// torrent-patron patch: what a ban covers. Elsewhere a peer is its address (libtorrent bans
/// the address too: a liar that dials again from another port is still banned); on loopback
/// every peer shares one address, so there it is the address and port.
pub(crate) fn ban_key(addr: SocketAddr) -> SocketAddr {
    // An IPv4 peer reaching a dual-stack listener is `::ffff:a.b.c.d`: the same peer.
    let ip = addr.ip().to_canonical();
    if ip.is_loopback() {
        SocketAddr::new(ip, addr.port())
    } else {
        SocketAddr::new(ip, 0)
    }
}

impl Drop for PeerStates {
    fn drop(&mut self) {
        for (_, p) in std::mem::take(&mut self.states).into_iter() {
            p.destroy(self);
        }
    }
}

impl PeerStates {
    /// torrent-patron patch: bans `addr` (see `ban_key`) for as long as the torrent runs: it
    /// is not dialled again, and its connections are refused.
    pub(crate) fn ban(&self, addr: SocketAddr, why: String) {
        let key = ban_key(addr);
        let mut banned = self.banned.lock();
        if banned.iter().any(|(k, _)| *k == key) {
            return;
        }
        if banned.len() >= MAX_BANNED {
            banned.remove(0);
        }
        banned.push((key, why));
    }

    /// torrent-patron patch: forgets one peer that is dead or not needed (no connection, no
    /// task of it left that needs its entry: a back-off's wait finds it gone and does
    /// nothing). Whether there was one.
    /// torrent-patron patch: whether one more peer may be known: below the bound, or once
    /// an idle one is forgotten. Not to be called holding an entry of `states`.
    pub(crate) fn has_room(&self) -> bool {
        self.states.len() < MAX_KNOWN_PEERS || self.forget_one_idle_peer()
    }

    fn forget_one_idle_peer(&self) -> bool {
        // Counted by state: with none idle, no look through every peer (a tracker naming
        // thousands at each announce cost a core).
        let idle_count = self.stats.dead.load(std::sync::atomic::Ordering::Relaxed)
            + self.stats.not_needed.load(std::sync::atomic::Ordering::Relaxed);
        if idle_count == 0 {
            return false;
        }
        let idle = self
            .states
            .iter()
            .find(|e| matches!(e.value().get_state(), PeerState::Dead | PeerState::NotNeeded))
            .map(|e| *e.key());
        // The iteration's shard lock is released before the removal takes it again, and the
        // peer is removed only if it is still idle (a back-off or a dial may have queued it).
        let Some(addr) = idle else {
            return false;
        };
        match self.states.remove_if(&addr, |_, p| {
            matches!(p.get_state(), PeerState::Dead | PeerState::NotNeeded)
        }) {
            Some((_, peer)) => {
                self.stats.dec(peer.get_state());
                self.session_stats.dec(peer.get_state());
                true
            }
            None => false,
        }
    }

    /// torrent-patron patch: whether `addr` is banned, and why.
    pub fn banned_why(&self, addr: SocketAddr) -> Option<String> {
        let key = ban_key(addr);
        self.banned
            .lock()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, why)| why.clone())
    }

    /// torrent-patron patch: a peer went live. Whoever sleeps on `peer_went_live` is woken,
    /// and the torrent's speed estimators run again (see `TorrentStateLive::estimate_speeds`).
    pub(crate) fn went_live(&self) {
        self.peer_went_live.send_modify(|n| *n = n.wrapping_add(1));
        // Paired with the fence in the estimators' task as it stops (see there).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if let Some(live) = self.live.upgrade() {
            live.estimate_speeds();
        }
    }

    pub fn stats(&self) -> AggregatePeerStats {
        self.stats.snapshot()
    }

    pub fn add_if_not_seen(&self, addr: SocketAddr) -> Option<PeerHandle> {
        use dashmap::mapref::entry::Entry;
        // torrent-patron patch: the list of known peers is bounded (libtorrent's
        // max_peerlist_size): past it, a peer not connected nor waited for is forgotten to
        // make room, and with none such the new one is not taken.
        if !self.states.contains_key(&addr) && !self.has_room() {
            return None;
        }
        match self.states.entry(addr) {
            Entry::Occupied(_) => None,
            Entry::Vacant(vac) => {
                vac.insert(Peer::new_with_outgoing_address(addr));
                atomic_inc(&self.stats.queued);
                atomic_inc(&self.session_stats.queued);

                atomic_inc(&self.stats.seen);
                atomic_inc(&self.session_stats.seen);
                Some(addr)
            }
        }
    }
    pub fn with_peer<R>(&self, addr: PeerHandle, f: impl FnOnce(&Peer) -> R) -> Option<R> {
        self.states.get(&addr).map(|e| f(e.value()))
    }

    pub fn with_peer_mut<R>(
        &self,
        addr: PeerHandle,
        reason: &'static str,
        f: impl FnOnce(&mut Peer) -> R,
    ) -> Option<R> {
        use crate::torrent_state::utils::timeit;
        timeit(reason, || self.states.get_mut(&addr))
            .map(|e| f(TimedExistence::new(e, reason).value_mut()))
    }

    pub fn with_live<R>(&self, addr: PeerHandle, f: impl FnOnce(&LivePeerState) -> R) -> Option<R> {
        self.with_peer(addr, |peer| peer.get_live().map(f))
            .flatten()
    }

    pub fn with_live_mut<R>(
        &self,
        addr: PeerHandle,
        reason: &'static str,
        f: impl FnOnce(&mut LivePeerState) -> R,
    ) -> Option<R> {
        self.with_peer_mut(addr, reason, |peer| peer.get_live_mut().map(f))
            .flatten()
    }

    pub fn drop_peer(&self, handle: PeerHandle) -> Option<Peer> {
        let p = self.states.remove(&handle).map(|r| r.1)?;
        let s = p.get_state();
        self.stats.dec(s);
        self.session_stats.dec(s);

        Some(p)
    }

    pub fn is_peer_not_interested_and_has_full_torrent(
        &self,
        handle: PeerHandle,
        total_pieces: usize,
    ) -> bool {
        self.with_live(handle, |live| {
            !live.peer_interested && live.has_full_torrent(total_pieces)
        })
        .unwrap_or(false)
    }

    pub fn mark_peer_interested(&self, handle: PeerHandle, is_interested: bool) -> Option<bool> {
        self.with_live_mut(handle, "mark_peer_interested", |live| {
            let prev = live.peer_interested;
            live.peer_interested = is_interested;
            prev
        })
    }

    pub fn update_bitfield(
        &self,
        handle: PeerHandle,
        bitfield: BF,
        total_pieces: usize,
    ) -> Option<()> {
        self.with_live_mut(handle, "update_bitfield", |live| {
            live.bitfield = bitfield;
            self.update_seeder_flag(live, total_pieces);
        })
    }

    // Recompute the cached "this peer has the full torrent" flag after its bitfield
    // changed, keeping the aggregate seeder counters in sync. Must be called on every
    // bitfield change of a live peer.
    pub fn update_seeder_flag(&self, live: &mut LivePeerState, total_pieces: usize) {
        let seeder = live.has_full_torrent(total_pieces);
        if seeder == live.seeder {
            return;
        }
        live.seeder = seeder;
        self.stats.seeder_flag_changed(seeder);
        self.session_stats.seeder_flag_changed(seeder);
    }

    pub fn mark_peer_connecting(&self, h: PeerHandle) -> crate::Result<(PeerRx, PeerTx)> {
        let rx = self
            .with_peer_mut(h, "mark_peer_connecting", |peer| {
                peer.idle_to_connecting(self)
                    .ok_or(Error::BugInvalidPeerState)
            })
            .ok_or(Error::BugPeerNotFound)??;
        Ok(rx)
    }

    pub fn reset_peer_backoff(&self, handle: PeerHandle) {
        self.with_peer_mut(handle, "reset_peer_backoff", |p| {
            p.stats.reset_backoff();
        });
    }

    pub fn mark_peer_not_needed(&self, handle: PeerHandle) -> Option<PeerState> {
        let prev = self.with_peer_mut(handle, "mark_peer_not_needed", |peer| {
            peer.set_not_needed(self)
        })?;
        Some(prev)
    }

    pub(crate) fn on_steal(
        &self,
        from_peer: SocketAddr,
        to_peer: SocketAddr,
        stolen_idx: ValidPieceIndex,
    ) {
        self.with_peer(to_peer, |p| {
            atomic_inc(&p.stats.counters.times_i_stole);
        });
        self.with_peer(from_peer, |p| {
            atomic_inc(&p.stats.counters.times_stolen_from_me);
        });
        self.stats.inc_steals();
        self.session_stats.inc_steals();

        self.with_live_mut(from_peer, "send_cancellations", |live| {
            live.cancel_inflight_requests_for_piece(stolen_idx);
        });
    }
}

#[cfg(test)]
mod tests {
    use librqbit_core::hash_id::Id20;

    use super::*;
    use crate::stream_connect::ConnectionKind;

    const TOTAL_PIECES: usize = 8;

    fn full_bitfield() -> BF {
        BF::from_boxed_slice(vec![0xffu8; 1].into_boxed_slice())
    }

    fn empty_bitfield() -> BF {
        BF::from_boxed_slice(vec![0u8; 1].into_boxed_slice())
    }

    fn make_peer_states() -> PeerStates {
        PeerStates {
            session_stats: Default::default(),
            live_outgoing_peers: Default::default(),
            stats: Default::default(),
            states: Default::default(),
            peer_went_live: Default::default(),
            live: std::sync::Weak::new(),
            banned: Default::default(),
        }
    }

    // torrent-patron patch: the list of known peers is bounded; an idle one makes room.
    #[test]
    fn the_known_peers_are_bounded_and_an_idle_one_makes_room() {
        let peers = make_peer_states();
        let addr = |n: usize| SocketAddr::from(([127, 0, 0, 1], 1 + n as u16));
        for n in 0..MAX_KNOWN_PEERS {
            assert!(peers.add_if_not_seen(addr(n)).is_some());
        }
        // All queued (waited for): no room.
        assert!(peers.add_if_not_seen(addr(MAX_KNOWN_PEERS)).is_none());
        assert_eq!(peers.states.len(), MAX_KNOWN_PEERS);
        peers.with_peer_mut(addr(7), "test", |p| {
            p.set_state(PeerState::NotNeeded, &peers);
        });
        assert!(peers.add_if_not_seen(addr(MAX_KNOWN_PEERS)).is_some());
        assert_eq!(peers.states.len(), MAX_KNOWN_PEERS);
        assert!(peers.with_peer(addr(7), |_| ()).is_none());
    }

    // torrent-patron patch: bans, by address and port on loopback, by address elsewhere,
    // and bounded.
    #[test]
    fn a_ban_covers_the_address_elsewhere_and_the_port_on_loopback() {
        let peers = make_peer_states();
        peers.ban("127.0.0.1:7000".parse().unwrap(), "lied".into());
        peers.ban("192.0.2.9:7000".parse().unwrap(), "lied too".into());
        assert_eq!(
            peers.banned_why("127.0.0.1:7000".parse().unwrap()).as_deref(),
            Some("lied")
        );
        assert!(peers.banned_why("127.0.0.1:7001".parse().unwrap()).is_none());
        assert_eq!(
            peers.banned_why("192.0.2.9:51000".parse().unwrap()).as_deref(),
            Some("lied too")
        );
        for port in 0..1000u16 {
            peers.ban(SocketAddr::from(([127, 0, 0, 2], port)), "many".into());
        }
        assert_eq!(peers.banned.lock().len(), MAX_BANNED);
        // The oldest went first.
        assert!(peers.banned_why("127.0.0.1:7000".parse().unwrap()).is_none());
    }

    // torrent-patron patch: an idle torrent's periodic work sleeps on `peer_went_live`.
    #[tokio::test]
    async fn a_peer_going_live_wakes_whoever_sleeps_on_peer_went_live() {
        let peers = make_peer_states();
        let mut estimator = peers.peer_went_live.subscribe();
        let mut embedder = peers.peer_went_live.subscribe();
        let waiter = tokio::spawn(async move { estimator.changed().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let (_addr, _rx) = add_live_peer(&peers, "127.0.0.1:1234");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("a live peer wakes the sleeper")
            .unwrap()
            .unwrap();
        // Another that was not asleep yet is not left out: it sees the change when it looks.
        tokio::time::timeout(std::time::Duration::from_secs(5), embedder.changed())
            .await
            .expect("every receiver is told")
            .unwrap();
        // Nothing new: it sleeps.
        assert!(!embedder.has_changed().unwrap());
        // A peer new to the torrent and live at once (an incoming connection) wakes it too.
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let addr: SocketAddr = "127.0.0.1:1236".parse().unwrap();
        let peer = Peer::new_live_for_incoming_connection(
            addr,
            Id20::default(),
            tx,
            &peers,
            ConnectionKind::Tcp,
        );
        peers.states.insert(addr, peer);
        assert!(embedder.has_changed().unwrap(), "an incoming peer wakes it");
    }

    // Returns the peer handle, keeping the receiving end of the peer channel alive.
    fn add_live_peer(peers: &PeerStates, addr: &str) -> (PeerHandle, PeerRx) {
        let addr: SocketAddr = addr.parse().unwrap();
        peers.add_if_not_seen(addr).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        peers
            .with_peer_mut(addr, "test", |peer| {
                peer.incoming_connection(Id20::default(), tx, peers, ConnectionKind::Tcp)
            })
            .unwrap()
            .unwrap();
        (addr, rx)
    }

    fn live_seeders(peers: &PeerStates) -> (u32, u32) {
        (
            peers.stats().live_seeders,
            peers.session_stats.snapshot().live_seeders,
        )
    }

    #[test]
    fn full_bitfield_counts_as_seeder_and_is_uncounted_on_disconnect() {
        let peers = make_peer_states();
        let (addr, _rx) = add_live_peer(&peers, "127.0.0.1:1234");
        assert_eq!(live_seeders(&peers), (0, 0));

        peers
            .update_bitfield(addr, empty_bitfield(), TOTAL_PIECES)
            .unwrap();
        assert_eq!(live_seeders(&peers), (0, 0));

        peers
            .update_bitfield(addr, full_bitfield(), TOTAL_PIECES)
            .unwrap();
        assert_eq!(live_seeders(&peers), (1, 1));

        // Repeated updates must not double-count.
        peers
            .update_bitfield(addr, full_bitfield(), TOTAL_PIECES)
            .unwrap();
        assert_eq!(live_seeders(&peers), (1, 1));

        peers.drop_peer(addr).unwrap();
        assert_eq!(live_seeders(&peers), (0, 0));
    }

    #[test]
    fn bitfield_completed_piece_by_piece_counts_as_seeder() {
        let peers = make_peer_states();
        let (addr, _rx) = add_live_peer(&peers, "127.0.0.1:1234");
        peers
            .update_bitfield(addr, empty_bitfield(), TOTAL_PIECES)
            .unwrap();

        for piece in 0..TOTAL_PIECES {
            peers
                .with_live_mut(addr, "test", |live| {
                    *live.bitfield.get_mut(piece).unwrap() = true;
                    peers.update_seeder_flag(live, TOTAL_PIECES);
                })
                .unwrap();
            let expected = u32::from(piece == TOTAL_PIECES - 1);
            assert_eq!(live_seeders(&peers), (expected, expected));
        }
    }

    #[test]
    fn seeder_is_uncounted_when_peer_leaves_live_state() {
        let peers = make_peer_states();
        let (addr, _rx) = add_live_peer(&peers, "127.0.0.1:1234");
        peers
            .update_bitfield(addr, full_bitfield(), TOTAL_PIECES)
            .unwrap();
        assert_eq!(live_seeders(&peers), (1, 1));

        peers.mark_peer_not_needed(addr).unwrap();
        assert_eq!(live_seeders(&peers), (0, 0));
    }

    #[test]
    fn seeders_are_counted_per_peer() {
        let peers = make_peer_states();
        let (a, _rx_a) = add_live_peer(&peers, "127.0.0.1:1234");
        let (b, _rx_b) = add_live_peer(&peers, "127.0.0.1:1235");

        peers
            .update_bitfield(a, full_bitfield(), TOTAL_PIECES)
            .unwrap();
        peers
            .update_bitfield(b, empty_bitfield(), TOTAL_PIECES)
            .unwrap();
        assert_eq!(live_seeders(&peers), (1, 1));

        peers
            .update_bitfield(b, full_bitfield(), TOTAL_PIECES)
            .unwrap();
        assert_eq!(live_seeders(&peers), (2, 2));

        peers.drop_peer(a).unwrap();
        assert_eq!(live_seeders(&peers), (1, 1));
    }
}
