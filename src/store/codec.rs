//! Values on disk: one version byte, then postcard. A new record layout gets a new version byte
//! and a decoder for the old one stays here, so an old state dir still opens.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

/// A record kept in the store, with the layout version it is written in.
pub trait Stored: Serialize + DeserializeOwned {
    /// The layout written now; bumped when the record's fields change.
    const VERSION: u8 = 1;

    /// Decodes a value written in an older layout (`version` < `VERSION`).
    fn decode_older(version: u8, _body: &[u8]) -> Result<Self, StoreError> {
        Err(StoreError::Codec(format!("no decoder for value version {version}")))
    }
}

pub fn encode<T: Stored>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = vec![T::VERSION];
    let body = postcard::to_stdvec(value).map_err(|e| StoreError::Codec(e.to_string()))?;
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

pub fn decode<T: Stored>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&v, body)) if v == T::VERSION => body_of(body),
        Some((&v, body)) if v >= 1 && v < T::VERSION => T::decode_older(v, body),
        Some((v, _)) => Err(StoreError::Codec(format!("value version {v} is newer than this gaffer understands"))),
        None => Err(StoreError::Codec("empty value".into())),
    }
}

/// A postcard body in the layout `T` is.
pub fn body_of<T: DeserializeOwned>(body: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(body).map_err(|e| StoreError::Codec(e.to_string()))
}
