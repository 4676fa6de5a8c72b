"""The floor Envoy's wasm host sets under Tollgate's filters: the plain Envoy
bootstrap of the benchmark with a filter that does nothing but what Tollgate's
filters must do at least (tests/bench/floor-filter), started beside it on the
same mocks. Whatever a Tollgate filter costs above its floor row is its own
work; the floor itself is Envoy's (a wasm context per request, a held body).
One more row is a reference for the guard: Envoy's own ratelimit filter asking
the same rate-limit service the same question."""

from __future__ import annotations

import copy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOOR_WASM = ROOT / "target/wasm32-wasip1/release/tollgate_bench_floor.wasm"
PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# label → (downstream mode, mode of a filter run once per attempt or None);
# the modes are described in tests/bench/floor-filter/src/lib.rs.
FLOORS = {
    "floor: pass": ("pass", None),
    "floor: hold request": ("hold-request", None),
    "floor: hold request + per-attempt": ("hold-request", "pass"),
    "floor: hold request + response": ("hold-request-and-response", None),
    "floor: router's least calls": ("router-least-calls", "attempt-least-calls"),
    "floor: meter's least calls": ("meter-least-calls", None),
}
ENVOY_RATELIMIT = "Envoy ratelimit filter"


def wasm_filter(name: str, mode: str) -> dict:
    return {"name": name, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": name, "root_id": "", "vm_config": {
            "vm_id": name, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(FLOOR_WASM)}}},
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": mode},
            # As the router's: a pause on headers then waits for the body.
            "allow_on_headers_stop_iteration": True}}}


def connection_managers(bootstrap: dict) -> list[dict]:
    return [f["typed_config"] for listener in bootstrap["static_resources"]["listeners"]
            for chain in listener["filter_chains"] for f in chain["filters"] if "http_filters" in f["typed_config"]]


def floor_bootstrap(plain: dict, mode: str, per_attempt: str | None) -> dict:
    """The plain bootstrap with the floor filter first in the HTTP chain
    (and, with a `per_attempt` mode, first in every cluster's upstream chain)."""
    bootstrap = copy.deepcopy(plain)
    for manager in connection_managers(bootstrap):
        manager["http_filters"].insert(0, wasm_filter("tollgate.bench.floor", mode))
    if per_attempt:
        for cluster in bootstrap["static_resources"]["clusters"]:
            options = cluster.get("typed_extension_protocol_options", {}).get(PROTOCOL_OPTIONS)
            if options and "http_filters" in options:
                options["http_filters"].insert(0, wasm_filter("tollgate.bench.floor.upstream", per_attempt))
    return bootstrap


def envoy_ratelimit_bootstrap(plain: dict, ratelimit_cluster: dict, domain: str) -> dict:
    """The plain bootstrap with Envoy's ratelimit filter asking `domain` about
    the guard's two request limits (user; user and tier) in one call."""
    bootstrap = copy.deepcopy(plain)
    bootstrap["static_resources"]["clusters"].append(ratelimit_cluster)
    user = {"request_headers": {"header_name": "x-user-id", "descriptor_key": "user_id"}}
    tier = {"request_headers": {"header_name": "x-model-tier", "descriptor_key": "model_tier"}}
    for manager in connection_managers(bootstrap):
        manager["http_filters"].insert(0, {"name": "envoy.filters.http.ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": domain, "timeout": "0.1s", "failure_mode_deny": False,
            "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": ratelimit_cluster["name"]}},
                                   "transport_api_version": "V3"}}})
        for virtual_host in manager["route_config"]["virtual_hosts"]:
            virtual_host["rate_limits"] = [{"actions": [user]}, {"actions": [user, tier]}]
    return bootstrap
