//! Values on disk: one version byte, then postcard. Each record type has its own layout
//! version ([`Record::VERSION`]); a record whose layout changes bumps it and reads the older
//! layouts in [`Record::upgrade`], so an old state dir still opens and its values are rewritten
//! in the new layout as they change.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

/// A value stored in a table.
pub trait Record: Serialize + DeserializeOwned {
    /// The layout written now.
    const VERSION: u8 = 1;

    /// Reads a value written in an older layout `version` (below [`Record::VERSION`]).
    fn upgrade(version: u8, _body: &[u8]) -> Result<Self, StoreError> {
        Err(StoreError::Codec(format!("value version {version} is not a layout this gaffer knows")))
    }
}

pub fn encode<T: Record>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = vec![T::VERSION];
    let body = postcard::to_stdvec(value).map_err(|e| StoreError::Codec(e.to_string()))?;
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&v, body)) if v == T::VERSION => body_of(body),
        Some((&v, body)) if v < T::VERSION => T::upgrade(v, body),
        Some((v, _)) => Err(StoreError::Codec(format!("value version {v} is newer than this gaffer understands"))),
        None => Err(StoreError::Codec("empty value".into())),
    }
}

/// A postcard body, in whatever layout `T` is.
pub fn body_of<T: DeserializeOwned>(body: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(body).map_err(|e| StoreError::Codec(e.to_string()))
}
