//! Renders the Envoy bootstrap for a local gateway from [`GatewayConfig`]. A
//! pure function: the same config and options always give the same bootstrap,
//! so the shipped `envoy/*.yaml` can be checked against it.

use crate::config::{Backend, Endpoint, GatewayConfig, Provider};
use crate::telemetry;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The three wasm filters, in chain order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Filter {
    Router,
    Meter,
    Guard,
}

impl Filter {
    pub const ALL: [Filter; 3] = [Filter::Router, Filter::Meter, Filter::Guard];

    pub fn name(self) -> &'static str {
        match self {
            Filter::Router => "router",
            Filter::Meter => "meter",
            Filter::Guard => "guard",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .with_context(|| format!("unknown filter `{name}` (router, meter, guard)"))
    }

    fn wasm_file(self) -> String {
        format!("tollgate_{}_wasm.wasm", self.name())
    }

    fn root_id(self) -> String {
        format!("tollgate.{}", self.name())
    }
}

pub struct RenderOptions<'a> {
    /// Directory holding the built `tollgate_*_wasm.wasm` modules.
    pub wasm_dir: &'a Path,
    /// Filters to install (each must have a configuration in the file).
    pub filters: &'a [Filter],
    /// Listener and admin addresses (port 0: the kernel picks one).
    pub listen: &'a str,
    pub admin: &'a str,
    /// Actual ports of backends started on ephemeral ports, by name.
    pub backend_ports: &'a BTreeMap<String, u16>,
}

/// Root id of the router's per-attempt half (see `tollgate_router::ROOT_ID_UPSTREAM`).
const ROUTER_UPSTREAM_ROOT_ID: &str = "tollgate.router.upstream";

pub fn render(config: &GatewayConfig, options: &RenderOptions<'_>) -> Result<Value> {
    let mut http_filters = Vec::new();
    for &filter in options.filters {
        let filter_config = match filter {
            Filter::Router => &config.filters.router,
            Filter::Meter => &config.filters.meter,
            Filter::Guard => &config.filters.guard,
        };
        let Some(filter_config) = filter_config else {
            bail!("filter `{}` is requested but has no entry under `filters:`", filter.name());
        };
        http_filters.push(wasm_filter(filter, &filter.root_id(), filter_config, options.wasm_dir));
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));

    let per_attempt_router = options.filters.contains(&Filter::Router);
    let clusters = config
        .backends
        .iter()
        .map(|backend| cluster(backend, options, per_attempt_router))
        .collect::<Result<Vec<_>>>()?;

    Ok(json!({
        "admin": {"address": socket_address(options.admin)?},
        "static_resources": {
            "listeners": [{
                "name": "tollgate",
                "address": socket_address(options.listen)?,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "tollgate",
                        "codec_type": "AUTO",
                        "route_config": route_config(config),
                        "http_filters": http_filters,
                        "access_log": [telemetry::access_log()],
                    }
                }]}]
            }],
            "clusters": clusters,
        }
    }))
}

fn socket_address(address: &str) -> Result<Value> {
    let (host, port) = address.rsplit_once(':').with_context(|| format!("`{address}` is not host:port"))?;
    let port: u16 = port.parse().with_context(|| format!("bad port in `{address}`"))?;
    Ok(json!({"socket_address": {"address": host, "port_value": port}}))
}

fn wasm_filter(filter: Filter, root_id: &str, config: &Value, wasm_dir: &Path) -> Value {
    let mut plugin = json!({
        "name": root_id,
        "root_id": root_id,
        "vm_config": {
            // One VM per module and worker, shared by the module's roots.
            "vm_id": filter.root_id(),
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": wasm_dir.join(filter.wasm_file()).display().to_string()}}
        },
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": config.to_string()
        },
        "fail_open": false
    });
    if filter == Filter::Router && root_id != ROUTER_UPSTREAM_ROOT_ID {
        // Without this Envoy turns the router's Pause on request headers into
        // stop-all-iteration and never delivers the body it routes on.
        plugin["allow_on_headers_stop_iteration"] = json!(true);
    }
    json!({
        "name": root_id,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": plugin
        }
    })
}

fn cluster(backend: &Backend, options: &RenderOptions<'_>, per_attempt_router: bool) -> Result<Value> {
    let endpoint = Endpoint::parse(&backend.url)?;
    let port = options.backend_ports.get(&backend.name).copied().unwrap_or(endpoint.port);
    let mut upstream_filters = Vec::new();
    if per_attempt_router {
        // Runs once per attempt, after Envoy picked the host, so a retry or a
        // fallback to another backend is rewritten for the backend it reaches.
        let empty = json!({});
        upstream_filters.push(wasm_filter(Filter::Router, ROUTER_UPSTREAM_ROOT_ID, &empty, options.wasm_dir));
    }
    upstream_filters.push(json!({
        "name": "envoy.filters.http.upstream_codec",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}
    }));
    let mut cluster = json!({
        // Cluster = backend name (dot-free, see config validation).
        "name": backend.name,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": backend.name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": endpoint.host, "port_value": port}
            }}}]}]
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": upstream_filters
            }
        },
        "metadata": {"filter_metadata": {"tollgate": {
            "backend": backend.name,
            "provider": match backend.provider { Provider::Openai => "openai", Provider::Anthropic => "anthropic" }
        }}}
    });
    if endpoint.tls {
        cluster["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": endpoint.host
            }
        });
    }
    Ok(cluster)
}

fn route_to(config: &GatewayConfig, backend: &str) -> Value {
    let timeout_ms = config.backend(backend).map_or(60_000, |b| b.timeout_ms);
    json!({"cluster": backend, "timeout": format!("{}s", timeout_ms as f64 / 1000.0)})
}

fn header_route(name: &str, header: &str, value: &str, action: Value) -> Value {
    json!({
        "name": name,
        "match": {"prefix": "/", "headers": [{"name": header, "string_match": {"exact": value}}]},
        "route": action
    })
}

fn route_config(config: &GatewayConfig) -> Value {
    let mut routes = Vec::new();
    // An explicit model wins over a tier, a tier over the default split.
    for (model, backend) in &config.models {
        routes.push(header_route(&format!("model.{model}"), "x-ai-model", model, route_to(config, backend)));
    }
    for (tier, backend) in &config.tiers {
        routes.push(header_route(&format!("tier.{tier}"), "x-model-tier", tier, route_to(config, backend)));
    }
    let timeout_ms = config
        .default_route
        .iter()
        .filter_map(|w| config.backend(&w.backend))
        .map(|b| b.timeout_ms)
        .max()
        .unwrap_or(60_000);
    routes.push(json!({
        "name": "default",
        "match": {"prefix": "/"},
        "route": {
            "weighted_clusters": {"clusters": config.default_route.iter().map(|w| json!({
                "name": w.backend, "weight": w.weight
            })).collect::<Vec<_>>()},
            "timeout": format!("{}s", timeout_ms as f64 / 1000.0)
        }
    }));
    json!({
        "name": "tollgate",
        "virtual_hosts": [{
            "name": "tollgate",
            "domains": ["*"],
            // Numbers each try for the per-attempt filter, and tells the client.
            "include_request_attempt_count": true,
            "include_attempt_count_in_response": true,
            "retry_policy": {
                "retry_on": "connect-failure,refused-stream,reset,retriable-status-codes",
                "retriable_status_codes": config.retry.on_status,
                "num_retries": config.retry.num_retries
            },
            "routes": routes
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GatewayConfig {
        serde_yaml::from_str(
            "
backends:
  - {name: vllm-8b, provider: openai, url: 'http://127.0.0.1:8001', mock: true}
  - {name: vllm-70b, provider: openai, url: 'http://127.0.0.1:8002', mock: true, timeout_ms: 1500}
  - {name: openai, provider: openai, url: 'https://api.openai.com'}
models: {gpt-4-turbo: openai}
tiers: {fast: vllm-8b}
default_route: [{backend: vllm-70b, weight: 90}, {backend: vllm-8b, weight: 10}]
filters: {router: {max_body_bytes: 1000}, meter: {}}
",
        )
        .unwrap()
    }

    fn render_with(filters: &[Filter], ports: &BTreeMap<String, u16>) -> Result<Value> {
        render(
            &config(),
            &RenderOptions {
                wasm_dir: Path::new("/w"),
                filters,
                listen: "127.0.0.1:0",
                admin: "127.0.0.1:9901",
                backend_ports: ports,
            },
        )
    }

    #[test]
    fn filters_are_chained_in_order_before_the_router() {
        let b = render_with(&[Filter::Router, Filter::Meter], &BTreeMap::new()).unwrap();
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let names: Vec<_> = hcm["http_filters"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["tollgate.router", "tollgate.meter", "envoy.filters.http.router"]);
        let router = &hcm["http_filters"][0]["typed_config"]["config"];
        assert_eq!(router["allow_on_headers_stop_iteration"], true);
        assert_eq!(router["configuration"]["value"], r#"{"max_body_bytes":1000}"#);
        assert_eq!(router["vm_config"]["code"]["local"]["filename"], "/w/tollgate_router_wasm.wasm");
        assert!(hcm["http_filters"][1]["typed_config"]["config"].get("allow_on_headers_stop_iteration").is_none());
    }

    #[test]
    fn a_filter_without_configuration_is_an_error() {
        let e = render_with(&[Filter::Guard], &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("`guard`"), "{e}");
    }

    #[test]
    fn routes_go_model_then_tier_then_weighted_default() {
        let b = render_with(&[], &BTreeMap::new()).unwrap();
        let vhost = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0];
        let routes = vhost["routes"].as_array().unwrap();
        assert_eq!(routes[0]["match"]["headers"][0]["name"], "x-ai-model");
        assert_eq!(routes[0]["route"]["cluster"], "openai");
        assert_eq!(routes[1]["match"]["headers"][0]["string_match"]["exact"], "fast");
        let split = &routes[2]["route"]["weighted_clusters"]["clusters"];
        assert_eq!(split[0], json!({"name": "vllm-70b", "weight": 90}));
        assert_eq!(routes[2]["route"]["timeout"], "60s");
        assert_eq!(vhost["retry_policy"]["retriable_status_codes"], json!([429, 500, 502, 503]));
    }

    #[test]
    fn clusters_take_ephemeral_ports_tls_and_the_per_attempt_filter() {
        let ports = BTreeMap::from([("vllm-8b".to_string(), 40123)]);
        let b = render_with(&[Filter::Router], &ports).unwrap();
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        let addr = |i: usize| clusters[i]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"].clone();
        assert_eq!(addr(0)["port_value"], 40123);
        assert_eq!(addr(1)["port_value"], 8002);
        assert_eq!(addr(2), json!({"address": "api.openai.com", "port_value": 443}));
        assert_eq!(clusters[2]["transport_socket"]["typed_config"]["sni"], "api.openai.com");
        assert!(clusters[0].get("transport_socket").is_none());
        let upstream = clusters[0]["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"].as_array().unwrap();
        assert_eq!(upstream[0]["typed_config"]["config"]["root_id"], "tollgate.router.upstream");
        assert_eq!(upstream[1]["name"], "envoy.filters.http.upstream_codec");

        let plain = render_with(&[], &ports).unwrap();
        let upstream = &plain["static_resources"]["clusters"][0]["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"];
        assert_eq!(upstream.as_array().unwrap().len(), 1, "no per-attempt filter without the router");
    }
}
