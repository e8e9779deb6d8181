//! Reading every patron's requests on one thread.
//!
//! All patrons' request channels sit in one `IpcReceiverSet`. The thread decodes each
//! message at once (a raw `IpcMessage` holds a ~212 KB buffer, so none is ever queued) and
//! hands it to the patron's own task. A closed channel is how a crash is seen: the set
//! reports it within a millisecond of the patron's death. New patrons' receivers arrive
//! through a control channel that sits in the same set, so the thread never needs waking.
//!
//! The router helpers of ipc-channel are not used: they unwrap decode errors, and one bad
//! message would kill routing for everyone. Decoding here never panics on a `Request` (it
//! carries no channels), and a panic is still caught, just in case.

use crate::broker::Broker;
use crate::patron::PatronId;
use anyhow::Context;
use ipc_channel::ipc::{
    self, IpcMessage, IpcReceiver, IpcReceiverSet, IpcSelectionResult, IpcSender,
};
use proto::Request;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

type NewPatron = (PatronId, IpcReceiver<Request>);

/// Hands new patrons' request channels to the reader thread.
#[derive(Clone)]
pub struct RequestReader {
    control: IpcSender<NewPatron>,
}

impl RequestReader {
    /// Starts the reader thread.
    pub fn start(broker: Arc<Broker>) -> anyhow::Result<RequestReader> {
        let (control, control_rx) = ipc::channel::<NewPatron>().context("control channel")?;
        let mut set = IpcReceiverSet::new().context("receiver set")?;
        let control_id = set.add(control_rx).context("receiver set")?;
        std::thread::Builder::new()
            .name("requests".into())
            .spawn(move || read_forever(broker, set, control_id))?;
        Ok(RequestReader { control })
    }

    /// Starts reading a patron's requests.
    pub fn add(&self, patron: PatronId, requests: IpcReceiver<Request>) -> anyhow::Result<()> {
        self.control
            .send((patron, requests))
            .map_err(|e| anyhow::anyhow!("request reader is gone: {e}"))
    }
}

fn read_forever(broker: Arc<Broker>, mut set: IpcReceiverSet, control_id: u64) {
    let mut patrons: HashMap<u64, PatronId> = HashMap::new();
    loop {
        let results = match set.select() {
            Ok(results) => results,
            Err(e) => {
                tracing::error!("request reader failed: {e}");
                broker
                    .shutdown
                    .trigger(format!("request reader failed: {e}"));
                return;
            }
        };
        for result in results {
            match result {
                IpcSelectionResult::MessageReceived(id, message) if id == control_id => {
                    let Ok((patron, receiver)) = decode::<NewPatron>(message) else {
                        continue;
                    };
                    match set.add(receiver) {
                        Ok(set_id) => {
                            patrons.insert(set_id, patron);
                        }
                        Err(e) => {
                            tracing::warn!(patron, "cannot watch patron's channel: {e}");
                            broker.patron_gone(patron);
                        }
                    }
                }
                IpcSelectionResult::MessageReceived(id, message) => {
                    let Some(&patron) = patrons.get(&id) else {
                        continue;
                    };
                    match decode::<Request>(message) {
                        Ok(request) => broker.dispatch(patron, request),
                        Err(e) => broker.protocol_error(patron, e),
                    }
                }
                IpcSelectionResult::ChannelClosed(id) => {
                    if let Some(patron) = patrons.remove(&id) {
                        broker.patron_gone(patron);
                    }
                }
            }
        }
    }
}

fn decode<T>(message: IpcMessage) -> Result<T, String>
where
    T: for<'de> serde::Deserialize<'de> + serde::Serialize,
{
    match std::panic::catch_unwind(AssertUnwindSafe(|| message.to::<T>())) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("cannot decode message: {e}")),
        Err(_) => Err("message made the decoder panic".into()),
    }
}
