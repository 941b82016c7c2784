//! Values on disk: one version byte, then postcard. A new record layout gets a new version byte
//! and a decoder for the old one stays here, so an old state dir still opens.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

const VERSION: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = vec![VERSION];
    let body = postcard::to_stdvec(value).map_err(|e| StoreError::Codec(e.to_string()))?;
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&VERSION, body)) => postcard::from_bytes(body).map_err(|e| StoreError::Codec(e.to_string())),
        Some((v, _)) => Err(StoreError::Codec(format!("value version {v} is newer than this gaffer understands"))),
        None => Err(StoreError::Codec("empty value".into())),
    }
}
