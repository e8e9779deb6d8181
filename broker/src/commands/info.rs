//! `BrokerInfo`: who the broker is and how it runs.

use crate::service::Service;
use proto::{BrokerInfo, Event, RequestId};

pub fn run(service: &Service, request: RequestId) -> Event {
    let config = &service.config;
    let (patrons, torrents, files) = {
        let state = service.state();
        (
            state.patrons.len() as u32,
            state.registry.len() as u32,
            state.registry.owned_files(),
        )
    };
    let large = service.large_requests.use_now();
    Event::BrokerInfo {
        request,
        info: BrokerInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            state_dir: config.state_dir.display().to_string(),
            listen: config.listen.to_string(),
            loopback_only: config.loopback_only,
            download_roots: config
                .download_roots
                .iter()
                .map(|r| r.display().to_string())
                .collect(),
            patrons,
            torrents,
            streams: service.streams.count() as u32,
            open_files: service.engine.file_pool().open_files() as u32,
            open_files_limit: service.engine.file_pool().capacity() as u32,
            large_requests: (large.0 as u32, large.1 as u32),
            large_request_bytes: (large.2 as u64, large.3 as u64),
            files: (files as u64, config.max_files as u64),
            board_waiters: (
                service.board.waiters() as u32,
                crate::board::MAX_WAITERS as u32,
            ),
        },
    }
}
