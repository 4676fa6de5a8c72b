//! Parsing of a filter's JSON configuration, with errors that name the field.

use serde::de::DeserializeOwned;
use tollgate_host::ConfigError;

/// Parses a plugin configuration. An empty configuration means the defaults
/// (`{}`), as Envoy passes nothing when a filter has no `configuration`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { bytes };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        ConfigError::new(field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        limit: u32,
        #[serde(default)]
        nested: Option<Nested>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        name: String,
    }

    #[test]
    fn empty_configuration_means_defaults() {
        assert_eq!(parse::<Sample>(b"").unwrap(), Sample { limit: 0, nested: None });
        assert_eq!(parse::<Sample>(b"  \n").unwrap().limit, 0);
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse::<Sample>(br#"{"limit": "ten"}"#).unwrap_err();
        assert_eq!(e.field, "limit");
        assert!(e.message.contains("invalid type"), "{e}");
        let e = parse::<Sample>(br#"{"nested": {"nme": "x"}}"#).unwrap_err();
        assert_eq!(e.field, "nested.nme");
        assert!(e.to_string().contains("unknown field `nme`"), "{e}");
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        let e = parse::<Sample>(b"{not json").unwrap_err();
        assert!(e.message.contains("key must be a string"), "{e}");
    }
}
