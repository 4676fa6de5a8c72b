//! Who is calling: a configured (virtual) key, else the identity headers an
//! authentication filter in front sets.

use crate::config::Identity;
use tollgate_core::virtual_keys::{hex, key_hash, presented_key};

/// Longest descriptor value taken from a header as it is; longer values are
/// replaced by a hash (they become parts of counter keys).
const MAX_VALUE_BYTES: usize = 128;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub user: Option<String>,
    pub team: Option<String>,
    /// A configured key's id, or `sha256:<16 hex>` of an unknown key.
    pub key: Option<String>,
    /// Whether a configured key identified the caller.
    pub verified: bool,
    /// The header that carried a configured key (removed before upstream).
    pub key_header: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identified {
    Caller(Caller),
    /// Keys are required and none was sent.
    MissingKey,
    /// Keys are required and this one is not configured.
    UnknownKey,
}

/// A header value fit for a descriptor: trimmed, non-empty, long ones hashed.
pub fn descriptor_value(value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.len() > MAX_VALUE_BYTES || value.chars().any(char::is_control) {
        return Some(format!("sha256:{}", hex(key_hash(value).get(..8).unwrap_or_default())));
    }
    Some(value.to_string())
}

pub fn identify(identity: &Identity, header: &dyn Fn(&str) -> Option<String>) -> Identified {
    let presented = identity
        .key_headers
        .iter()
        .find_map(|name| header(name).and_then(|value| presented_key(name, &value).map(str::to_string)).map(|key| (name.clone(), key)));
    if let Some((name, key)) = &presented {
        let hash = key_hash(key);
        if let Some(info) = identity.keys.get(&hash) {
            return Identified::Caller(Caller {
                user: Some(info.user.clone()),
                team: info.team.clone(),
                key: Some(info.id.clone()),
                verified: true,
                key_header: Some(name.clone()),
            });
        }
        if identity.require_key {
            return Identified::UnknownKey;
        }
    } else if identity.require_key {
        return Identified::MissingKey;
    }
    let key = presented
        .filter(|_| identity.unknown_keys_as_ids)
        .map(|(_, key)| format!("sha256:{}", hex(key_hash(&key).get(..8).unwrap_or_default())));
    Identified::Caller(Caller {
        user: identity.user_header.as_deref().and_then(header).and_then(|v| descriptor_value(&v)),
        team: header(&identity.team_header).and_then(|v| descriptor_value(&v)),
        key,
        verified: false,
        key_header: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GuardConfig;

    fn identity(json: &str) -> Identity {
        let config: GuardConfig = tollgate_core::config::parse(json.as_bytes()).unwrap();
        config.compile().unwrap().identity
    }

    fn lookup<'a>(headers: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_string())
    }

    const ALICE: &str = "sk-alice-0123";

    fn keyed(require: bool) -> Identity {
        identity(&format!(
            r#"{{"identity": {{"require_key": {require}, "keys": [{{"sha256": "{}", "id": "alice-1", "user": "alice", "team": "search"}}]}}}}"#,
            hex(&key_hash(ALICE))
        ))
    }

    #[test]
    fn a_configured_key_names_user_team_and_key() {
        let who = identify(&keyed(true), &lookup(&[("authorization", "Bearer sk-alice-0123"), ("x-user-id", "mallory")]));
        let Identified::Caller(caller) = who else { panic!("{who:?}") };
        assert_eq!(caller.user.as_deref(), Some("alice"), "the header cannot override a key");
        assert_eq!(caller.team.as_deref(), Some("search"));
        assert_eq!(caller.key.as_deref(), Some("alice-1"));
        assert!(caller.verified);
        assert_eq!(caller.key_header.as_deref(), Some("authorization"));
        let who = identify(&keyed(true), &lookup(&[("x-api-key", ALICE)]));
        assert!(matches!(who, Identified::Caller(c) if c.key_header.as_deref() == Some("x-api-key")));
    }

    #[test]
    fn required_keys_refuse_missing_and_unknown_ones() {
        assert_eq!(identify(&keyed(true), &lookup(&[("x-user-id", "bob")])), Identified::MissingKey);
        assert_eq!(identify(&keyed(true), &lookup(&[("authorization", "Bearer nope")])), Identified::UnknownKey);
        assert_eq!(identify(&keyed(true), &lookup(&[("authorization", "Basic c2s=")])), Identified::MissingKey);
    }

    #[test]
    fn without_required_keys_headers_identify_and_unknown_keys_get_ids() {
        let who = identify(&keyed(false), &lookup(&[("authorization", "Bearer sk-local"), ("x-user-id", " bob "), ("x-tollgate-team", "ads")]));
        let Identified::Caller(caller) = who else { panic!() };
        assert_eq!(caller.user.as_deref(), Some("bob"));
        assert_eq!(caller.team.as_deref(), Some("ads"));
        assert_eq!(caller.key.as_deref(), Some(format!("sha256:{}", &hex(&key_hash("sk-local"))[..16]).as_str()));
        assert!(!caller.verified);
        assert_eq!(caller.key_header, None, "an unknown key is passed on (it may be the provider's)");
        let who = identify(&keyed(false), &lookup(&[]));
        assert_eq!(who, Identified::Caller(Caller::default()));
    }

    #[test]
    fn long_or_odd_values_are_hashed() {
        assert_eq!(descriptor_value("  "), None);
        assert_eq!(descriptor_value("bob").as_deref(), Some("bob"));
        let long = "x".repeat(500);
        assert!(descriptor_value(&long).unwrap().starts_with("sha256:"));
        assert!(descriptor_value("a\u{1}b").unwrap().starts_with("sha256:"));
    }
}
