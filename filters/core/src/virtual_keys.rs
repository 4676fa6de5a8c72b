//! Virtual keys: API keys the gateway issues, configured as the hex SHA-256
//! of the key, and found in the request headers alike by every filter that
//! trusts them (the guard, for identity; the router, for tiers' teams).

use sha2::{Digest, Sha256};
use tollgate_host::ConfigError;

/// The key a header value presents: `Bearer ` dropped from `authorization`;
/// `None` for an empty value or another scheme.
pub fn presented_key<'a>(header: &str, value: &'a str) -> Option<&'a str> {
    let value = value.trim();
    let key = if header.eq_ignore_ascii_case("authorization") {
        let (scheme, rest) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        rest.trim()
    } else {
        value
    };
    (!key.is_empty()).then_some(key)
}

/// SHA-256 of a key.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A configured key hash: 64 hex digits, either case.
pub fn parse_key_hash(field: &str, hex: &str) -> Result<[u8; 32], ConfigError> {
    let hex = hex.trim().to_ascii_lowercase();
    if hex.len() != 64 {
        return Err(ConfigError::new(field, "must be 64 hex digits (the SHA-256 of the key)"));
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or_else(|| ConfigError::new(field, "must be 64 hex digits"))?;
        *slot = u8::from_str_radix(pair, 16).map_err(|_| ConfigError::new(field, format!("`{pair}` is not hex")))?;
    }
    Ok(out)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_as_clients_send_them() {
        assert_eq!(presented_key("authorization", "Bearer sk-1"), Some("sk-1"));
        assert_eq!(presented_key("Authorization", "  bearer   sk-1 "), Some("sk-1"));
        assert_eq!(presented_key("authorization", "Basic c2s="), None);
        assert_eq!(presented_key("authorization", "Bearer "), None);
        assert_eq!(presented_key("x-api-key", " sk-2 "), Some("sk-2"));
        assert_eq!(presented_key("x-api-key", ""), None);
    }

    #[test]
    fn hashes_round_trip_through_configuration() {
        let hash = key_hash("sk-tollgate-demo-alice");
        assert_eq!(hex(&hash), "2d9485d4cab1a03f4784d6af6fdf0925c068dbbc6ea7907dcc5eab142b19251e");
        assert_eq!(parse_key_hash("keys[0].sha256", &hex(&hash).to_ascii_uppercase()), Ok(hash));
        let e = parse_key_hash("keys[0].sha256", "abc").unwrap_err();
        assert_eq!(e.field, "keys[0].sha256");
        assert!(parse_key_hash("k", &"zz".repeat(32)).is_err());
    }
}
