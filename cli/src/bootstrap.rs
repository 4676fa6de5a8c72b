//! Renders the Envoy bootstrap for a local gateway from [`GatewayConfig`]. A
//! pure function: the same config and options always give the same bootstrap,
//! so the shipped `envoy/*.yaml` can be checked against it.

use crate::config::{Endpoint, GatewayConfig, Provider};
use tollgate_router::config::{ModelGroup, Routing};
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
    /// Actual gRPC port of the rate-limit service `tollgate run` started.
    pub ratelimit_port: Option<u16>,
}

/// Root id of the router's per-attempt half (see `tollgate_router::ROOT_ID_UPSTREAM`).
const ROUTER_UPSTREAM_ROOT_ID: &str = "tollgate.router.upstream";

pub fn render(config: &GatewayConfig, options: &RenderOptions<'_>) -> Result<Value> {
    let routing = config.routing()?;
    let router_config = config.router_config()?;
    let guard_config = config.guard_config()?;
    let key_variables = config.key_variables();
    let plugin = |filter: Filter, root_id: &str, filter_config: &Value| Plugin {
        filter,
        root_id: root_id.to_string(),
        config: filter_config.clone(),
        wasm_dir: options.wasm_dir,
        env_keys: if filter == Filter::Router { key_variables.clone() } else { Vec::new() },
    };
    let mut http_filters = Vec::new();
    for &filter in options.filters {
        let filter_config = match filter {
            Filter::Router => config.filters.router.as_ref().map(|_| &router_config),
            Filter::Meter => config.filters.meter.as_ref(),
            Filter::Guard => guard_config.as_ref(),
        };
        let Some(filter_config) = filter_config else {
            bail!("filter `{}` is requested but has no entry under `filters:`", filter.name());
        };
        http_filters.push(plugin(filter, &filter.root_id(), filter_config).render());
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));

    let upstream_filters = upstream_filters(options.filters.contains(&Filter::Router).then(|| {
        plugin(Filter::Router, ROUTER_UPSTREAM_ROOT_ID, &router_config)
    }));
    let mut clusters = Vec::new();
    for backend in &config.backends {
        clusters.push(cluster(&backend.name, &[backend.name.as_str()], config, options, &upstream_filters)?);
    }
    for (_, group, primary, name) in group_routes(&routing) {
        let order = routing.attempt_order(group, primary);
        let order: Vec<&str> = order.iter().map(String::as_str).collect();
        clusters.push(cluster(&name, &order, config, options, &upstream_filters)?);
    }
    if options.filters.contains(&Filter::Guard) {
        if let (Some(name), Some(service)) = (config.guard_cluster()?, &config.ratelimit) {
            clusters.push(ratelimit_cluster(&name, service.target(), options.ratelimit_port)?);
        }
    }

    Ok(json!({
        "admin": {"address": socket_address(options.admin)?},
        "stats_config": telemetry::stats_config(),
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
                        "route_config": route_config(config, &routing)?,
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

/// One wasm plugin of the chain (or of a cluster's upstream filters).
struct Plugin<'a> {
    filter: Filter,
    root_id: String,
    config: Value,
    wasm_dir: &'a Path,
    /// Environment variables the VM may read (the backends' keys): only
    /// their names enter the configuration.
    env_keys: Vec<String>,
}

impl Plugin<'_> {
    fn render(&self) -> Value {
        let mut vm_config = json!({
            // One VM per module and worker, shared by the module's roots (and
            // so is the router's shared data: backend load, latency, cool-down).
            "vm_id": self.filter.root_id(),
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": self.wasm_dir.join(self.filter.wasm_file()).display().to_string()}}
        });
        if !self.env_keys.is_empty() {
            vm_config["environment_variables"] = json!({"host_env_keys": self.env_keys});
        }
        let mut plugin = json!({
            "name": self.root_id,
            "root_id": self.root_id,
            "vm_config": vm_config,
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": self.config.to_string()
            },
            "fail_open": false
        });
        if self.filter == Filter::Router {
            // Both router roots pause request headers until the body is here
            // (to route on it downstream, to rewrite it per attempt upstream);
            // without this Envoy turns that pause into stop-all-iteration and
            // never delivers the body.
            plugin["allow_on_headers_stop_iteration"] = json!(true);
        }
        if self.filter == Filter::Meter {
            // The meter holds request headers until the body is read (it may
            // add stream_options.include_usage) and non-streamed response
            // headers until the body is (usage headers).
            plugin["allow_on_headers_stop_iteration"] = json!(true);
        }
        if self.filter == Filter::Guard {
            // The guard holds request headers until the body is read (its
            // budget estimate needs the prompt and max_tokens).
            plugin["allow_on_headers_stop_iteration"] = json!(true);
        }
        json!({
            "name": self.root_id,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": plugin
            }
        })
    }
}

/// Filters every upstream attempt goes through: the router's per-attempt half
/// (when the router is installed), then the codec.
fn upstream_filters(router: Option<Plugin<'_>>) -> Vec<Value> {
    let mut filters = Vec::new();
    if let Some(router) = router {
        // Runs once per attempt, after Envoy picked the host, so a retry or a
        // fallback to another backend is rewritten for the backend it reaches.
        filters.push(router.render());
    }
    filters.push(json!({
        "name": "envoy.filters.http.upstream_codec",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}
    }));
    filters
}

/// Every (model group, primary backend) the router can decide on, with the
/// name of the cluster that tries the primary first and then the group's
/// fallback order. Group names may hold dots, which Envoy's stat tags would
/// cut at, so they become underscores in cluster names.
fn group_routes(routing: &Routing) -> Vec<(String, &ModelGroup, &str, String)> {
    let mut routes = Vec::new();
    let mut groups: Vec<&ModelGroup> = routing.groups.values().collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    for group in groups {
        for target in &group.targets {
            let cluster = format!("{}~{}", group.name.replace('.', "_"), target.backend);
            routes.push((group.name.clone(), group, target.backend.as_str(), cluster));
        }
    }
    routes
}

/// A cluster trying `order`'s backends in priority order (one priority each):
/// Envoy's retries move to the next priority (`previous_priorities`), and a
/// priority whose endpoints fail health checks or are ejected hands its
/// traffic on. Each endpoint names its backend in its metadata, which the
/// router's per-attempt half reads to know where an attempt landed.
fn cluster(name: &str, order: &[&str], config: &GatewayConfig, options: &RenderOptions<'_>, upstream_filters: &[Value]) -> Result<Value> {
    let mut priorities = Vec::new();
    let mut health_check_path = None;
    let mut tls_hosts: Vec<String> = Vec::new();
    let mut all_ip_literals = true;
    for (priority, backend_name) in order.iter().enumerate() {
        let backend = config.backend(backend_name).with_context(|| format!("unknown backend `{backend_name}`"))?;
        let endpoint = Endpoint::parse(&backend.url)?;
        let port = options.backend_ports.get(&backend.name).copied().unwrap_or(endpoint.port);
        all_ip_literals &= endpoint.host.parse::<std::net::IpAddr>().is_ok();
        let mut metadata = json!({"tollgate": {
            "backend": backend.name,
            "provider": match backend.provider { Provider::Openai => "openai", Provider::Anthropic => "anthropic" }
        }});
        if endpoint.tls {
            // A chain may mix plain and TLS backends (vLLM falling back to
            // OpenAI): each TLS endpoint selects its own TLS context by SNI.
            metadata["envoy.transport_socket_match"] = json!({"sni": endpoint.host});
            if !tls_hosts.contains(&endpoint.host) {
                tls_hosts.push(endpoint.host.clone());
            }
        }
        if priority == 0 {
            health_check_path = backend.health_check_path.clone();
        }
        priorities.push(json!({
            "priority": priority,
            "lb_endpoints": [{
                "endpoint": {"address": {"socket_address": {"address": endpoint.host, "port_value": port}}},
                "metadata": {"filter_metadata": metadata}
            }]
        }));
    }
    let mut cluster = json!({
        "name": name,
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": priorities},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": upstream_filters
            }
        }
        // Passive health is the router's cool-down (it covers 429s too and is
        // shared across workers), not Envoy's outlier detection.
    });
    // STATIC where every endpoint is an IP: with STRICT_DNS and active health
    // checks, Envoy 1.40 stopped moving retries down the priorities of a
    // chain whose endpoints share an IP (seen in tests with local mocks).
    if all_ip_literals {
        cluster["type"] = json!("STATIC");
    } else {
        cluster["type"] = json!("STRICT_DNS");
        cluster["dns_lookup_family"] = json!("V4_PREFERRED");
    }
    if let Some(path) = health_check_path {
        cluster["health_checks"] = json!([{
            "timeout": "2s",
            "interval": format!("{}s", config.health_check.interval_seconds),
            "unhealthy_interval": format!("{}s", config.health_check.unhealthy_interval_seconds),
            // Until a cluster has carried traffic, Envoy checks it at
            // no_traffic_interval (60 s by default), which overrides the two
            // above: a gateway just started would wait that long to take
            // back an endpoint whose first check failed.
            "no_traffic_interval": format!("{}s", config.health_check.unhealthy_interval_seconds),
            "no_traffic_healthy_interval": format!("{}s", config.health_check.interval_seconds),
            "unhealthy_threshold": config.health_check.unhealthy_threshold,
            "healthy_threshold": 1,
            "http_health_check": {"path": path}
        }]);
    }
    if !tls_hosts.is_empty() {
        cluster["transport_socket_matches"] = tls_hosts
            .iter()
            .map(|host| {
                json!({
                    "name": format!("tls-{host}"),
                    "match": {"sni": host},
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                            "sni": host
                        }
                    }
                })
            })
            .collect();
    }
    Ok(cluster)
}

/// The rate-limit service the guard calls: gRPC, so HTTP/2.
fn ratelimit_cluster(name: &str, address: &str, port: Option<u16>) -> Result<Value> {
    let (host, configured) = address.rsplit_once(':').with_context(|| format!("ratelimit: `{address}` is not host:port"))?;
    let configured: u16 = configured.parse().with_context(|| format!("ratelimit: bad port in `{address}`"))?;
    let mut cluster = json!({
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": host, "port_value": port.unwrap_or(configured)}}
        }}]}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        }
    });
    if host.parse::<std::net::IpAddr>().is_ok() {
        cluster["type"] = json!("STATIC");
    } else {
        cluster["type"] = json!("STRICT_DNS");
        cluster["dns_lookup_family"] = json!("V4_PREFERRED");
    }
    Ok(cluster)
}

fn timeout(config: &GatewayConfig, backend: &str) -> String {
    let ms = config.backend(backend).map_or(60_000, |b| b.timeout_ms);
    format!("{}s", ms as f64 / 1000.0)
}

fn header_match(name: &str, value: &str) -> Value {
    json!({"name": name, "string_match": {"exact": value}})
}

fn route_config(config: &GatewayConfig, routing: &Routing) -> Result<Value> {
    let mut routes = Vec::new();
    // The router's decisions first: model group and chosen backend.
    for (group, _, primary, cluster) in group_routes(routing) {
        routes.push(json!({
            "name": format!("model.{group}.{primary}"),
            "match": {"prefix": "/", "headers": [header_match("x-ai-model", &group), header_match("x-ai-backend", primary)]},
            "route": {"cluster": cluster, "timeout": timeout(config, primary)}
        }));
    }
    // Without the router (plain Envoy, or before it decides), the tier header
    // alone picks the tier's backend.
    let mut tiers: Vec<_> = routing.tiers.iter().collect();
    tiers.sort_by(|a, b| a.0.cmp(b.0));
    for (tier, settings) in tiers {
        let backend = match &settings.backend {
            Some(pinned) => pinned.clone(),
            None => routing
                .group(&settings.model)
                .and_then(|g| g.targets.first())
                .map(|t| t.backend.clone())
                .with_context(|| format!("tiers.{tier}: model has no target"))?,
        };
        routes.push(json!({
            "name": format!("tier.{tier}"),
            "match": {"prefix": "/", "headers": [header_match("x-model-tier", tier)]},
            "route": {"cluster": backend, "timeout": timeout(config, &backend)}
        }));
    }
    let slowest = config.default_route.iter().filter_map(|w| config.backend(&w.backend)).map(|b| b.timeout_ms).max().unwrap_or(60_000);
    routes.push(json!({
        "name": "default",
        "match": {"prefix": "/"},
        "route": {
            "weighted_clusters": {"clusters": config.default_route.iter().map(|w| json!({
                "name": w.backend, "weight": w.weight
            })).collect::<Vec<_>>()},
            "timeout": format!("{}s", slowest as f64 / 1000.0)
        }
    }));
    Ok(json!({
        "name": "tollgate",
        "virtual_hosts": [{
            "name": "tollgate",
            "domains": ["*"],
            // Routing facts and caller identity are the gateway's business:
            // Envoy drops them before the first try (one header map serves
            // every try), where the per-attempt filter would pay a host call
            // per header per try.
            "request_headers_to_remove": ["x-ai-model", "x-ai-backend", "x-ai-tier", routing.team_header],
            // Numbers each try for the per-attempt filter, and tells the client.
            "include_request_attempt_count": true,
            "include_attempt_count_in_response": true,
            "retry_policy": {
                "retry_on": "connect-failure,refused-stream,reset,retriable-status-codes",
                "retriable_status_codes": config.retry.on_status,
                "num_retries": config.retry.num_retries,
                // Each retry moves to the next backend of the fallback chain.
                "retry_priority": {
                    "name": "envoy.retry_priorities.previous_priorities",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                        "update_frequency": 1
                    }
                },
                // A backend's retry-after is honoured, up to a bound.
                "rate_limited_retry_back_off": {
                    "reset_headers": [{"name": "retry-after", "format": "SECONDS"}],
                    "max_interval": format!("{}s", config.retry.max_retry_after_seconds)
                }
            },
            "routes": routes
        }]
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GatewayConfig {
        serde_yaml::from_str(
            "
backends:
  - {name: vllm-8b, provider: openai, url: 'http://127.0.0.1:8001', mock: true, health_check_path: /healthz}
  - {name: vllm-70b, provider: openai, url: 'http://127.0.0.1:8002', mock: true, timeout_ms: 1500}
  - {name: nim-70b, provider: openai, url: 'http://127.0.0.1:8003', mock: true}
  - {name: openai, provider: openai, url: 'https://api.openai.com', api_key_env: OPENAI_API_KEY}
models:
  llama-8b: {targets: [{backend: vllm-8b}]}
  llama-3.1-70b:
    targets: [{backend: vllm-70b, weight: 90}, {backend: nim-70b, weight: 10}]
    fallbacks: [gpt-4-turbo]
  gpt-4-turbo: {targets: [{backend: openai}]}
tiers: {fast: {model: llama-8b}, quality: {model: llama-3.1-70b, backend: vllm-70b}}
default_route: [{backend: vllm-70b, weight: 90}, {backend: nim-70b, weight: 10}]
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
                ratelimit_port: None,
            },
        )
    }

    fn cluster<'a>(bootstrap: &'a Value, name: &str) -> &'a Value {
        bootstrap["static_resources"]["clusters"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()
    }

    fn endpoints(cluster: &Value) -> Vec<(u64, String, u64)> {
        cluster["load_assignment"]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let e = &p["lb_endpoints"][0];
                (
                    p["priority"].as_u64().unwrap(),
                    e["metadata"]["filter_metadata"]["tollgate"]["backend"].as_str().unwrap().to_string(),
                    e["endpoint"]["address"]["socket_address"]["port_value"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn filters_are_chained_in_order_before_the_router() {
        let b = render_with(&[Filter::Router, Filter::Meter], &BTreeMap::new()).unwrap();
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let names: Vec<_> = hcm["http_filters"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["tollgate.router", "tollgate.meter", "envoy.filters.http.router"]);
        let router = &hcm["http_filters"][0]["typed_config"]["config"];
        assert_eq!(router["allow_on_headers_stop_iteration"], true);
        assert_eq!(router["vm_config"]["code"]["local"]["filename"], "/w/tollgate_router_wasm.wasm");
        assert_eq!(router["vm_config"]["environment_variables"]["host_env_keys"], json!(["OPENAI_API_KEY"]));
        let router_json: Value = serde_json::from_str(router["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(router_json["max_body_bytes"], 1000);
        assert_eq!(router_json["backends"]["openai"]["api_key_env"], "OPENAI_API_KEY");
        assert_eq!(router_json["tiers"]["quality"]["backend"], "vllm-70b");
        let meter = &hcm["http_filters"][1]["typed_config"]["config"];
        assert_eq!(meter["allow_on_headers_stop_iteration"], true, "the meter holds headers for bodies");
        assert!(meter["vm_config"].get("environment_variables").is_none(), "only the router sees keys");
    }

    #[test]
    fn the_guard_gets_an_http2_cluster_for_the_rate_limit_service_and_the_meters_prices() {
        let mut config = config();
        config.filters.guard = Some(json!({"rate_limits": [{"descriptor": [{"key": "user_id", "from": "user"}]}]}));
        config.filters.meter = Some(json!({"models": {"m": {"input": 1, "output": 2}}}));
        config.ratelimit = Some(serde_yaml::from_str("{config: rls.yaml, listen: '127.0.0.1:8081'}").unwrap());
        let no_ports = BTreeMap::new();
        let options = |port| RenderOptions {
            wasm_dir: Path::new("/w"),
            filters: &Filter::ALL,
            listen: "127.0.0.1:0",
            admin: "127.0.0.1:9901",
            backend_ports: &no_ports,
            ratelimit_port: port,
        };
        let b = render(&config, &options(None)).unwrap();
        let rls = cluster(&b, "ratelimit");
        assert_eq!(rls["type"], "STATIC");
        assert!(rls["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["explicit_http_config"]
            .get("http2_protocol_options")
            .is_some());
        assert_eq!(rls["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"], 8081);
        let b = render(&config, &options(Some(40999))).unwrap();
        assert_eq!(
            cluster(&b, "ratelimit")["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"],
            40999
        );
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let guard = &hcm["http_filters"][2]["typed_config"]["config"];
        assert_eq!(guard["root_id"], "tollgate.guard");
        assert_eq!(guard["allow_on_headers_stop_iteration"], true, "the guard holds headers for bodies");
        let guard_json: Value = serde_json::from_str(guard["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(guard_json["prices"]["m"], json!({"input": 1, "output": 2}), "priced as the meter prices");
        // Without the guard, no cluster.
        let b = render_with(&[Filter::Router], &BTreeMap::new()).unwrap();
        assert!(b["static_resources"]["clusters"].as_array().unwrap().iter().all(|c| c["name"] != "ratelimit"));
    }

    #[test]
    fn a_filter_without_configuration_is_an_error() {
        let e = render_with(&[Filter::Guard], &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("`guard`"), "{e}");
    }

    #[test]
    fn routes_go_router_decision_then_tier_then_weighted_default() {
        let b = render_with(&[], &BTreeMap::new()).unwrap();
        let vhost = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0];
        let routes = vhost["routes"].as_array().unwrap();
        let names: Vec<_> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "model.gpt-4-turbo.openai",
                "model.llama-3.1-70b.vllm-70b",
                "model.llama-3.1-70b.nim-70b",
                "model.llama-8b.vllm-8b",
                "tier.fast",
                "tier.quality",
                "default"
            ]
        );
        assert_eq!(routes[1]["match"]["headers"][1], json!({"name": "x-ai-backend", "string_match": {"exact": "vllm-70b"}}));
        assert_eq!(routes[1]["route"], json!({"cluster": "llama-3_1-70b~vllm-70b", "timeout": "1.5s"}));
        assert_eq!(routes[4]["route"]["cluster"], "vllm-8b", "a tier without a pin takes its model's first target");
        assert_eq!(routes[5]["route"]["cluster"], "vllm-70b");
        let split = &routes[6]["route"]["weighted_clusters"]["clusters"];
        assert_eq!(split[0], json!({"name": "vllm-70b", "weight": 90}));
        let retry = &vhost["retry_policy"];
        assert_eq!(retry["retriable_status_codes"], json!([429, 500, 502, 503]));
        assert_eq!(retry["retry_priority"]["name"], "envoy.retry_priorities.previous_priorities");
        assert_eq!(retry["rate_limited_retry_back_off"]["max_interval"], "10s");
        assert_eq!(
            vhost["request_headers_to_remove"],
            json!(["x-ai-model", "x-ai-backend", "x-ai-tier", "x-tollgate-team"]),
            "routing facts and the team stay in the gateway"
        );
    }

    #[test]
    fn fallback_clusters_try_the_primary_then_the_group_then_fallbacks() {
        let ports = BTreeMap::from([("vllm-70b".to_string(), 40123)]);
        let b = render_with(&[Filter::Router], &ports).unwrap();
        assert_eq!(
            endpoints(cluster(&b, "llama-3_1-70b~nim-70b")),
            [(0, "nim-70b".into(), 8003), (1, "vllm-70b".into(), 40123), (2, "openai".into(), 443)]
        );
        assert_eq!(endpoints(cluster(&b, "vllm-8b")), [(0, "vllm-8b".into(), 8001)]);
        let upstream = cluster(&b, "vllm-8b")["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"].clone();
        assert_eq!(upstream[0]["typed_config"]["config"]["root_id"], "tollgate.router.upstream");
        assert_eq!(upstream[0]["typed_config"]["config"]["allow_on_headers_stop_iteration"], true);
        assert_eq!(upstream[1]["name"], "envoy.filters.http.upstream_codec");
        assert_eq!(cluster(&b, "vllm-8b")["health_checks"][0]["http_health_check"]["path"], "/healthz");
        assert_eq!(cluster(&b, "vllm-8b")["health_checks"][0]["unhealthy_threshold"], 3);
        assert_eq!(cluster(&b, "vllm-8b")["health_checks"][0]["unhealthy_interval"], "5s");
        assert_eq!(cluster(&b, "vllm-8b")["health_checks"][0]["no_traffic_interval"], "5s");
        assert_eq!(cluster(&b, "vllm-8b")["health_checks"][0]["no_traffic_healthy_interval"], "30s");
        assert!(cluster(&b, "vllm-70b").get("health_checks").is_none());
        let mixed = cluster(&b, "llama-3_1-70b~nim-70b");
        assert_eq!(mixed["transport_socket_matches"][0]["match"], json!({"sni": "api.openai.com"}));
        assert_eq!(mixed["transport_socket_matches"][0]["transport_socket"]["typed_config"]["sni"], "api.openai.com");
        let tls_endpoint = &mixed["load_assignment"]["endpoints"][2]["lb_endpoints"][0]["metadata"]["filter_metadata"];
        assert_eq!(tls_endpoint["envoy.transport_socket_match"], json!({"sni": "api.openai.com"}));
        assert!(mixed["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"]["filter_metadata"]
            .get("envoy.transport_socket_match")
            .is_none(), "plain endpoints stay plain");
        assert!(cluster(&b, "vllm-8b").get("transport_socket_matches").is_none());
        assert_eq!(cluster(&b, "vllm-8b")["type"], "STATIC");
        assert_eq!(mixed["type"], "STRICT_DNS", "a hostname in the chain needs DNS");

        let plain = render_with(&[], &ports).unwrap();
        let upstream = &cluster(&plain, "vllm-8b")["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"];
        assert_eq!(upstream.as_array().unwrap().len(), 1, "no per-attempt filter without the router");
    }
}
