//! Reading nested JSON objects strictly. serde reads a struct from a JSON array too (its fields
//! in order), so `"x509Thumbprint": []` would pass for `{}`; an API body's objects must be JSON
//! objects, as its description says.

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error};
use serde_json::{Map, Value};

/// `deserialize_with` for an optional struct field: null or absent is `None`, an object is
/// read as `T`, anything else (an array included) is refused as the wrong type.
pub fn optional_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<Map<String, Value>>::deserialize(d)? {
        None => Ok(None),
        Some(map) => T::deserialize(Value::Object(map))
            .map(Some)
            .map_err(D::Error::custom),
    }
}

/// `deserialize_with` for a struct field that must be there: an object is read as `T`,
/// anything else (an array included) is refused as the wrong type.
pub fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let map = Map::<String, Value>::deserialize(d)?;
    T::deserialize(Value::Object(map)).map_err(D::Error::custom)
}
