//! `SetLabels` and `ConfigureLabel`: a torrent's labels, and what a label carries.

use crate::service::Service;
use proto::{ConfigureLabel, Event, RequestId, SetLabels};
use std::sync::Arc;

pub fn set(service: &Arc<Service>, request: RequestId, change: SetLabels) -> Event {
    match service.set_labels(change) {
        Ok(status) => Event::Status { request, status },
        Err(error) => Event::Error { request, error },
    }
}

pub fn configure(service: &Arc<Service>, request: RequestId, change: ConfigureLabel) -> Event {
    match service.configure_label(change) {
        Ok(labels) => Event::Labels { request, labels },
        Err(error) => Event::Error { request, error },
    }
}
