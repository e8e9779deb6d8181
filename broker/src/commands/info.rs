//! `BrokerInfo`: who the broker is and how it runs.

use crate::service::Service;
use proto::{Event, RequestId};

pub fn run(service: &Service, request: RequestId) -> Event {
    let info = service.broker_info();
    Event::BrokerInfo { request, info }
}
