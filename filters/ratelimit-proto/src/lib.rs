//! Envoy's global rate-limit API as prost messages: `envoy.service.ratelimit.v3`
//! (`RateLimitRequest`, `RateLimitResponse`), `envoy.extensions.common.ratelimit.v3`
//! (`RateLimitDescriptor`), `envoy.config.core.v3.HeaderValue` and
//! `envoy.type.v3.RateLimitUnit`, generated at build time from the minimal `.proto`
//! files in `proto/` (upstream package names and field numbers). Plain messages only,
//! so the crate builds for `wasm32-wasip1` too; the gRPC stubs live in the service.
//!
//! `google.protobuf.UInt64Value` fields are `Option<u64>` and `Duration` is
//! `prost_types::Duration`, as prost maps the well-known types.
//!
//! [`windows`] is the other half of the contract between the service and the
//! guard: the time windows each unit is counted in.

pub use prost;
pub use prost_types;

pub mod windows;

#[allow(clippy::all, missing_docs)]
pub mod envoy {
    pub mod service {
        pub mod ratelimit {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.ratelimit.v3.rs"));
            }
        }
    }
    pub mod extensions {
        pub mod common {
            pub mod ratelimit {
                pub mod v3 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/envoy.extensions.common.ratelimit.v3.rs"
                    ));
                }
            }
        }
    }
    pub mod config {
        pub mod core {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
    pub mod r#type {
        pub mod v3 {
            include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
        }
    }
}

pub use envoy::config::core::v3::HeaderValue;
pub use envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
pub use envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
pub use envoy::r#type::v3::RateLimitUnit;
pub use envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
pub use envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

/// The gRPC method path Envoy calls.
pub const SHOULD_RATE_LIMIT_PATH: &str =
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

impl RateLimitDescriptor {
    /// A descriptor from `(key, value)` entries, without override or hits_addend.
    pub fn from_entries<K: Into<String>, V: Into<String>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        RateLimitDescriptor {
            entries: entries
                .into_iter()
                .map(|(key, value)| Entry {
                    key: key.into(),
                    value: value.into(),
                })
                .collect(),
            limit: None,
            hits_addend: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn request_round_trips_with_upstream_field_numbers() {
        let mut descriptor = RateLimitDescriptor::from_entries([("user_id", "alice")]);
        descriptor.hits_addend = Some(0);
        descriptor.limit = Some(RateLimitOverride {
            requests_per_unit: 7,
            unit: RateLimitUnit::Week as i32,
        });
        let request = RateLimitRequest {
            domain: "ai-gateway".into(),
            descriptors: vec![descriptor],
            hits_addend: 3,
        };
        let bytes = request.encode_to_vec();
        assert_eq!(RateLimitRequest::decode(bytes.as_slice()).unwrap(), request);

        // Hand-checked wire bytes: domain is field 1 (tag 0x0a), descriptors field 2
        // (0x12), hits_addend field 3 varint (0x18); an explicit UInt64Value 0 is an
        // empty message in field 3 of the descriptor (0x1a 0x00).
        assert_eq!(&bytes[..12], b"\x0a\x0aai-gateway");
        assert_eq!(&bytes[bytes.len() - 2..], b"\x18\x03");
        let encoded_descriptor = request.descriptors[0].encode_to_vec();
        assert_eq!(
            encoded_descriptor,
            b"\x0a\x10\x0a\x07user_id\x12\x05alice\x12\x04\x08\x07\x10\x07\x1a\x00"
        );
    }

    #[test]
    fn absent_hits_addend_differs_from_explicit_zero() {
        let plain = RateLimitDescriptor::from_entries([("k", "v")]);
        let decoded = RateLimitDescriptor::decode(plain.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.hits_addend, None);
        let mut zero = plain.clone();
        zero.hits_addend = Some(0);
        let decoded = RateLimitDescriptor::decode(zero.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.hits_addend, Some(0));
    }

    #[test]
    fn response_round_trips() {
        let response = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![DescriptorStatus {
                code: Code::OverLimit as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: 100,
                    unit: Unit::Hour as i32,
                }),
                limit_remaining: 0,
                duration_until_reset: Some(prost_types::Duration {
                    seconds: 42,
                    nanos: 0,
                }),
            }],
            response_headers_to_add: vec![HeaderValue {
                key: "x-ratelimit-limit".into(),
                value: "100".into(),
                raw_value: Vec::new(),
            }],
            request_headers_to_add: Vec::new(),
        };
        let bytes = response.encode_to_vec();
        let decoded = RateLimitResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, response);
        assert_eq!(decoded.overall_code(), Code::OverLimit);
        assert_eq!(
            decoded.statuses[0].current_limit.as_ref().unwrap().unit(),
            Unit::Hour
        );
        // overall_code is field 1 varint.
        assert_eq!(&bytes[..2], b"\x08\x02");
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // A response carrying raw_body (field 5) and dynamic_metadata (field 6), which
        // this minimal schema leaves out, still decodes.
        let mut bytes = RateLimitResponse {
            overall_code: Code::Ok as i32,
            ..Default::default()
        }
        .encode_to_vec();
        bytes.extend_from_slice(b"\x2a\x03abc\x32\x00");
        let decoded = RateLimitResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.overall_code(), Code::Ok);
    }
}
