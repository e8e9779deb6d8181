//! torrent_patron's native part: a patron in a Python process.
//!
//! The Python package (`python/torrent_patron/`) gives the API its shape — `Patron`,
//! `AsyncPatron`, `TorrentFile`, typed and documented — over [`calls::Connection`] here,
//! which is `patron_client` made safe to share between Python threads and an asyncio loop
//! (DESIGN §12): one reader thread per connection routes replies to whoever waits for them,
//! status is read off the broker's board in shared memory with no request, and every wait
//! sleeps with the GIL released, in slices, so that Ctrl-C interrupts it.

mod calls;
mod core;
mod errors;
mod stream;
mod values;

use pyo3::prelude::*;

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<calls::Connection>()?;
    module.add_class::<calls::Reply>()?;
    module.add_class::<calls::BoardWatch>()?;
    module.add_class::<stream::Stream>()?;
    values::register(module)?;
    errors::register(module)?;
    module.add("PROTOCOL_VERSION", patron_client::proto::PROTOCOL_VERSION)?;
    Ok(())
}
