//! Lists a request may carry, bounded where they are decoded: a patron's few bytes on the
//! wire must not become the broker's gigabytes (an empty string is one byte there and 24
//! in memory; a list of ranges written out is millions of entries). A list past its bound
//! is refused as the request is, before it is built.

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// Files one request may name (`only`): as many as the largest torrent the broker takes by
/// default (`--max-files-per-torrent`).
pub const MAX_FILES_NAMED: usize = 200_000;

/// Peers or trackers one request may name.
pub const MAX_ADDRESSES_NAMED: usize = 1024;

struct Bounded<T> {
    most: usize,
    what: &'static str,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of at most {} {}", self.most, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        if seq.size_hint().is_some_and(|n| n > self.most) {
            return Err(serde::de::Error::custom(format!(
                "more than {} {} in one request",
                self.most, self.what
            )));
        }
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            if out.len() == self.most {
                return Err(serde::de::Error::custom(format!(
                    "more than {} {} in one request",
                    self.most, self.what
                )));
            }
            out.push(item);
        }
        Ok(out)
    }
}

fn bounded<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    most: usize,
    what: &'static str,
) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(Bounded {
        most,
        what,
        _t: PhantomData,
    })
}

/// `only`: at most [`MAX_FILES_NAMED`] files.
pub fn files<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<crate::FileRef>>, D::Error> {
    struct Some_;
    impl<'de> Visitor<'de> for Some_ {
        type Value = Option<Vec<crate::FileRef>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "an optional list of files")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            bounded(d, MAX_FILES_NAMED, "files").map(Some)
        }
    }
    d.deserialize_option(Some_)
}

/// Peers or trackers: at most [`MAX_ADDRESSES_NAMED`].
pub fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    bounded(d, MAX_ADDRESSES_NAMED, "addresses")
}
