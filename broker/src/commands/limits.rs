//! `SetLimits`: the broker's rate limits for all torrents, changed now and kept.

use crate::service::Service;
use proto::{Event, RequestId, SetLimits};

pub fn run(service: &Service, request: RequestId, change: SetLimits) -> Event {
    match service.set_limits(change) {
        Ok((limits, alt)) => Event::Limits {
            request,
            limits,
            alt,
        },
        Err(error) => Event::Error { request, error },
    }
}
