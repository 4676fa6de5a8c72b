#!/usr/bin/env python3
"""Writes the generated manifests of gateway-api/ from the local gateway.

    python3 gateway-api/generate.py          # rewrite 25-, 30-, 40-, 50-, 60-*.yaml
    python3 gateway-api/generate.py --check  # exit 1 if any of them is stale

The local gateway's Envoy configuration, envoy/local.json (what `tollgate
render` makes of examples/tollgate.yaml), is the reference for routing,
retries, health checks, each filter's JSON configuration and the guard's
rate-limit cluster; the hand-written 00-, 10-, 20- and 26-*.yaml say where
things are in the cluster (Services, provider Backends, the Secret holding API
keys, the rate-limit service). From both, and the rate-limit service's own
configuration file that examples/tollgate.yaml names, this writes:

    25-ratelimit-config.yaml      the rate-limit service's configuration
    30-httproute.yaml             the route table
    40-backendtrafficpolicy.yaml  retries and health checks per rule
    50-envoyextensionpolicy.yaml  the three wasm filters and their configuration
    60-envoypatchpolicy.yaml      what those cannot express, as xDS patches

tests/e2e/test_gateway_api.py checks that these files are up to date and,
independently of this script, that they say what envoy/local.json says.
Needs PyYAML only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOCAL = ROOT / "envoy" / "local.json"
GATEWAY_CONFIG = ROOT / "examples" / "tollgate.yaml"

NAMESPACE = "tollgate"
GATEWAY = "tollgate"
LISTENER = "http"
ROUTE = "tollgate"
EXTENSION_POLICY = "tollgate-filters"
WASM_BASE_URL = "http://tollgate-wasm.tollgate.svc.cluster.local"
WASM_FETCH_CLUSTER = "tollgate_wasm"  # static cluster added by the EnvoyProxy in 10-gateway.yaml
RATELIMIT_SERVICE = "tollgate-ratelimit"  # the Service (26-ratelimit.yaml) the guard's cluster points at
RATELIMIT_CONFIG_MAP = "tollgate-ratelimit-config"  # mounted by its Deployment
UPSTREAM_ROOT_ID = "tollgate.router.upstream"
OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Settings the local route's retry policy has that BackendTrafficPolicy expresses.
RETRY_IN_POLICY = {"retry_on", "retriable_status_codes", "num_retries", "retry_priority"}
# The local virtual host's settings no Gateway API or Envoy Gateway field carries.
VHOST_SETTINGS = ("include_request_attempt_count", "include_attempt_count_in_response", "request_headers_to_remove")


def flow(value) -> str:
    """One-line YAML (flow style) for small values."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").strip()


def block(value, indent: int) -> str:
    text = yaml.safe_dump(value, default_flow_style=None, width=110, sort_keys=False).rstrip()
    return "\n".join(" " * indent + line for line in text.split("\n"))


def duration(seconds: float) -> str:
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{int(seconds * 1000)}ms"


def seconds(text: str) -> float:
    return float(text[:-1]) if text.endswith("s") and not text.endswith("ms") else float(text[:-2]) / 1000


class Local:
    def __init__(self) -> None:
        bootstrap = json.loads(LOCAL.read_text())
        hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        self.vhost = hcm["route_config"]["virtual_hosts"][0]
        self.filters = [f["typed_config"]["config"] for f in hcm["http_filters"]
                        if f["name"] != "envoy.filters.http.router"]
        self.clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
        guard = next(f for f in self.filters if f["root_id"] == "tollgate.guard")
        self.guard = json.loads(guard["configuration"]["value"])

    def chain(self, cluster: str) -> list[str]:
        localities = sorted(self.clusters[cluster]["load_assignment"]["endpoints"], key=lambda e: e.get("priority", 0))
        return [e["metadata"]["filter_metadata"]["tollgate"]["backend"] for loc in localities for e in loc["lb_endpoints"]]

    def metadata(self, backend: str) -> dict:
        for cluster in self.clusters.values():
            for locality in cluster["load_assignment"]["endpoints"]:
                for endpoint in locality["lb_endpoints"]:
                    meta = endpoint["metadata"]["filter_metadata"]["tollgate"]
                    if meta["backend"] == backend:
                        return meta
        raise KeyError(backend)

    def routes(self) -> list[dict]:
        """Each local route as name, header matches, [(cluster, weight)], timeout."""
        routes = []
        for route in self.vhost["routes"]:
            action = route["route"]
            if "weighted_clusters" in action:
                targets = [(c["name"], c["weight"]) for c in action["weighted_clusters"]["clusters"]]
            else:
                targets = [(action["cluster"], 1)]
            routes.append({
                "name": route["name"].replace(".", "-"),
                "headers": [(h["name"], h["string_match"]["exact"]) for h in route["match"].get("headers") or []],
                "targets": targets,
                "timeout": action["timeout"],
            })
        return routes


class Cluster:
    """Where the backends and the rate-limit service are in Kubernetes, from the hand-written manifests."""

    def __init__(self) -> None:
        docs = [d for p in ("10-gateway.yaml", "20-backends.yaml", "26-ratelimit.yaml")
                for d in yaml.safe_load_all((HERE / p).read_text()) if d]
        self.services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        self.backends = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Backend"}
        proxy = next(d for d in docs if d["kind"] == "EnvoyProxy")
        self.key_variables = [e["name"] for e in proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"]]

    def is_tls(self, name: str) -> bool:
        return name in self.backends and bool(self.backends[name]["spec"].get("tls"))

    def backend_ref(self, name: str, weight: int) -> str:
        if name in self.backends:
            return flow({"group": "gateway.envoyproxy.io", "kind": "Backend", "name": name, "weight": weight})
        port = self.services[name]["spec"]["ports"][0]["port"]
        return flow({"group": "", "kind": "Service", "name": name, "port": port, "weight": weight})

    def authority(self, name: str) -> str:
        if name in self.services:
            service = self.services[name]
            return f"{name}.{service['metadata']['namespace']}.svc.cluster.local:{service['spec']['ports'][0]['port']}"
        fqdn = self.backends[name]["spec"]["endpoints"][0]["fqdn"]
        default_port = 443 if self.is_tls(name) else 80
        return fqdn["hostname"] if fqdn["port"] == default_port else f"{fqdn['hostname']}:{fqdn['port']}"

    def hostname(self, name: str) -> str:
        return self.backends[name]["spec"]["endpoints"][0]["fqdn"]["hostname"]

    def grpc_address(self, name: str) -> tuple[str, int]:
        """A Service's DNS name and its `grpc` port."""
        service = self.services[name]
        port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
        return f"{name}.{service['metadata']['namespace']}.svc.cluster.local", port


def key_variable(backend: str, cluster: Cluster) -> str | None:
    variable = f"{backend.upper().replace('-', '_')}_API_KEY"
    return variable if variable in cluster.key_variables else None


def router_config(local: Local, cluster: Cluster) -> dict:
    """The local router configuration, with the backends where Kubernetes has them."""
    config = json.loads(next(f for f in local.filters if f["root_id"] == "tollgate.router")["configuration"]["value"])
    for name, settings in config.get("backends", {}).items():
        settings["authority"] = cluster.authority(name)
        variable = key_variable(name, cluster)
        if variable:
            settings["api_key_env"] = variable
        else:
            settings.pop("api_key_env", None)
    return config


def ratelimit_config_map() -> str:
    """The rate-limit service's configuration file, verbatim, as a ConfigMap."""
    relative = yaml.safe_load(GATEWAY_CONFIG.read_text())["ratelimit"]["config"]
    source = ROOT / relative  # relative to the working directory, which for `make run` is the repository
    content = source.read_text()
    text = f"""# GENERATED by gateway-api/generate.py from {relative}: do not edit.
#
# The rate-limit service's configuration (envoyproxy/ratelimit's format), the
# file that `ratelimit.config` in examples/tollgate.yaml names, verbatim. The
# service's Deployment (26-ratelimit.yaml) mounts it as a directory.
apiVersion: v1
kind: ConfigMap
metadata:
  name: {RATELIMIT_CONFIG_MAP}
  namespace: {NAMESPACE}
data:
  {source.name}: |
""" + "".join(f"    {line}" if line.strip() else line for line in content.splitlines(keepends=True))
    # A literal block cannot hold every text (leading blanks on the first line,
    # no final newline or several): refuse one that would not read back the same.
    if yaml.safe_load(text)["data"][source.name] != content:
        raise SystemExit(f"{relative} does not fit a YAML literal block unchanged")
    return text


def httproute(local: Local, cluster: Cluster) -> str:
    out = [f"""# GENERATED by gateway-api/generate.py from envoy/local.json: do not edit.
#
# The route table of the local gateway. The router filter resolves the body's
# model (aliases, tiers) to a model group, picks one of its backends by the
# group's strategy, publishes both as `x-ai-model` and `x-ai-backend`, and has
# Envoy choose the route again, so the (model, backend) rules see them.
# Requests it did not resolve fall through to the tier rules, then to the
# weighted default. Gateway API precedence puts a rule with two header matches
# before a rule with one; equal rules keep their order (Envoy Gateway sorts
# stably), which is the local order.
#
# Not expressed yet: a local (model, backend) cluster also holds the group's
# other backends and the fallback groups' at priorities 1 and 2, so a retry
# moves down that chain; here a retry stays on the rule's backend (README.md).
#
# Envoy Gateway makes one cluster per rule, `httproute/{NAMESPACE}/{ROUTE}/rule/<i>`,
# which 60-envoypatchpolicy.yaml patches by that name.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {ROUTE}
  namespace: {NAMESPACE}
spec:
  parentRefs:
    - group: gateway.networking.k8s.io
      kind: Gateway
      name: {GATEWAY}
      sectionName: {LISTENER}
  rules:"""]
    for i, route in enumerate(local.routes()):
        backends = [(local.chain(name)[0], weight) for name, weight in route["targets"]]
        out.append(f"    # rule/{i}\n    - name: {route['name']}\n      matches:\n        - path: {{type: PathPrefix, value: /}}")
        if route["headers"]:
            out.append("          headers:")
            out += [f"            - {flow({'type': 'Exact', 'name': n, 'value': v})}" for n, v in route["headers"]]
        if len(backends) == 1 and backends[0][0] in cluster.backends:
            out.append(f"      filters:\n        - type: URLRewrite\n          urlRewrite:\n"
                       f"            hostname: {cluster.hostname(backends[0][0])}")
        out.append("      backendRefs:")
        out += [f"        - {cluster.backend_ref(name, weight)}" for name, weight in backends]
        out.append(f"      timeouts:\n        request: {route['timeout']}")
    return "\n".join(out) + "\n"


def traffic_policies(local: Local, cluster: Cluster) -> str:
    retry = local.vhost["retry_policy"]
    groups: dict[str, list[str]] = {}
    checks: dict[str, dict | None] = {}
    for route in local.routes():
        cluster_checks = [json.dumps(local.clusters[name].get("health_checks") or [], sort_keys=True)
                          for name, _ in route["targets"]]
        assert len(set(cluster_checks)) == 1, f"{route['name']}: its clusters are checked differently"
        for name, _ in route["targets"]:
            assert not local.clusters[name].get("outlier_detection"), "outlier detection: not generated yet"
        groups.setdefault(cluster_checks[0], []).append(route["name"])
        checks[cluster_checks[0]] = (local.clusters[route["targets"][0][0]].get("health_checks") or [None])[0]
    spec_retry: dict = {"numRetries": retry["num_retries"]}
    if "retry_priority" in retry:
        spec_retry["numAttemptsPerPriority"] = retry["retry_priority"]["typed_config"]["update_frequency"]
    spec_retry["retryOn"] = {"triggers": retry["retry_on"].split(","),
                             "httpStatusCodes": retry["retriable_status_codes"]}
    out = ["""# GENERATED by gateway-api/generate.py from envoy/local.json: do not edit.
#
# Retries and active health checks as the local gateway has them: one policy
# per set of rules whose local clusters are checked alike, attached to the
# rules by name (a rule-level policy replaces a route-level one, it does not
# merge). The `retry-after` back-off is patched in by 60-envoypatchpolicy.yaml.
# Active checks use a path both vLLM and NIM serve (the local mocks answer the
# configured `health_check_path`); as locally, none run against public providers."""]
    documents = []
    for key, rules in groups.items():
        check = checks[key]
        name = "tollgate-health-checked" if check else "tollgate-providers"
        spec: dict = {"retry": spec_retry}
        if check:
            spec["healthCheck"] = {"active": {
                "type": "HTTP", "interval": check["interval"], "timeout": check["timeout"],
                "unhealthyThreshold": check["unhealthy_threshold"], "healthyThreshold": check["healthy_threshold"],
                "http": {"path": "/v1/models", "method": "GET", "expectedStatuses": [200]}}}
        refs = "\n".join(f"    - {flow({'group': 'gateway.networking.k8s.io', 'kind': 'HTTPRoute', 'name': ROUTE, 'sectionName': r})}"
                         for r in rules)
        documents.append(f"""apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  targetRefs:
{refs}
{block(spec, 2)}""")
    return out[0] + "\n" + "\n---\n".join(documents) + "\n"


def extension_policy(local: Local, cluster: Cluster) -> str:
    out = [f"""# GENERATED by gateway-api/generate.py from envoy/local.json: do not edit.
#
# The filters, in the local chain's order: Envoy Gateway installs one wasm
# filter per entry, in list order, before its router (encode callbacks run in
# reverse). Each `config` reaches the filter verbatim as its plugin
# configuration: the local gateway's, except that the router is told where the
# backends are in the cluster and which variables hold their keys.
#
# Code: Envoy Gateway downloads each module from `http.url` and serves it to
# Envoy itself. The URLs name an in-cluster static file server for the built
# modules (target/wasm32-wasip1/release/tollgate_*_wasm.wasm); any HTTP server
# will do, or switch an entry to `type: Image`. `${{TOLLGATE_*_WASM_SHA256}}` are
# placeholders for the modules' SHA-256 (README.md shows how to fill them in).
#
# `env.hostKeys` lets the router's VM read the providers' keys, which the
# EnvoyProxy (10-gateway.yaml) sets in the Envoy container from a Secret.
# What this policy cannot say (allow_on_headers_stop_iteration, the per-attempt
# upstream filter) is patched in by 60-envoypatchpolicy.yaml. Envoy Gateway
# names these filters envoy.filters.http.wasm/envoyextensionpolicy/{NAMESPACE}/{EXTENSION_POLICY}/wasm/<i>.
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata:
  name: {EXTENSION_POLICY}
  namespace: {NAMESPACE}
spec:
  targetRefs:
    - {{group: gateway.networking.k8s.io, kind: Gateway, name: {GATEWAY}}}
  wasm:"""]
    for i, plugin in enumerate(local.filters):
        root_id = plugin["root_id"]
        short = root_id.removeprefix("tollgate.")
        config = router_config(local, cluster) if short == "router" else json.loads(plugin["configuration"]["value"])
        out.append(f"""    # wasm/{i}
    - name: {root_id}
      rootID: {root_id}
      code:
        type: HTTP
        http:
          url: {WASM_BASE_URL}/tollgate_{short}_wasm.wasm
          sha256: "${{TOLLGATE_{short.upper()}_WASM_SHA256}}\"""")
        keys = sorted({s["api_key_env"] for s in config.get("backends", {}).values() if "api_key_env" in s}) \
            if short == "router" else []
        if keys:
            out.append(f"      env:\n        hostKeys: {flow(keys)}")
        out.append("      config:" + (" {}" if not config else "\n" + block(config, 8)))
        out.append(f"      failOpen: {str(plugin['fail_open']).lower()}")
    return "\n".join(out) + "\n"


def patch_policy(local: Local, cluster: Cluster) -> str:
    router_index = next(i for i, f in enumerate(local.filters) if f["root_id"] == "tollgate.router")
    router_vm = f"envoyextensionpolicy/{NAMESPACE}/{EXTENSION_POLICY}/wasm/{router_index}"
    listener = f"{NAMESPACE}/{GATEWAY}/{LISTENER}"
    out = [f"""# GENERATED by gateway-api/generate.py from envoy/local.json: do not edit.
#
# What EnvoyExtensionPolicy and BackendTrafficPolicy cannot express, patched
# into the xDS that Envoy Gateway generates (needs
# `extensionApis.enableEnvoyPatchPolicy`, see helm/envoy-gateway-values.yaml).
# The names are Envoy Gateway v1.9's defaults:
#   Listener, RouteConfiguration    <gateway ns>/<gateway>/<listener> = {listener}
#   wasm filter                     envoy.filters.http.wasm/envoyextensionpolicy/<ns>/<policy>/wasm/<i>
#   Cluster, ClusterLoadAssignment  httproute/<ns>/<route>/rule/<i> (one per HTTPRoute rule)
# With the XDSNameSchemeV2 runtime flag (the default from v1.10) the listener
# becomes `tcp-80` and the route configuration `http-80`.
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyPatchPolicy
metadata:
  name: tollgate-router
  namespace: {NAMESPACE}
spec:
  targetRef:
    group: gateway.networking.k8s.io
    kind: Gateway
    name: {GATEWAY}
  type: JSONPatch
  jsonPatches:
    # 1. Filters that hold the request headers until the body is complete
    #    (the router routes on it): Envoy delivers the body to a filter that
    #    paused on headers only when its plugin config allows it. Envoy Gateway
    #    keeps the plugin config on the HCM filter (disabled there, enabled
    #    per route), so it is patched there."""]
    for i, plugin in enumerate(local.filters):
        if plugin.get("allow_on_headers_stop_iteration"):
            name = f"envoy.filters.http.wasm/envoyextensionpolicy/{NAMESPACE}/{EXTENSION_POLICY}/wasm/{i}"
            out.append(f"""    - type: type.googleapis.com/envoy.config.listener.v3.Listener
      name: {listener}
      operation:
        op: add
        jsonPath: "$..http_filters[?(@.name == '{name}')]"
        path: typed_config/config/allow_on_headers_stop_iteration
        value: true""")
    out.append("""
    # 2. The local virtual host's settings: Envoy numbers each try in
    #    x-envoy-attempt-count (read by the per-attempt filter, shown to
    #    clients), drops the router's decision headers and the team header
    #    before the first try (they are the gateway's business, not a
    #    provider's), and what of the retry policy BackendTrafficPolicy lacks.""")
    for key in VHOST_SETTINGS:
        if key in local.vhost:
            out.append(f"""    - type: type.googleapis.com/envoy.config.route.v3.RouteConfiguration
      name: {listener}
      operation:
        op: add
        jsonPath: "$.virtual_hosts[*]"
        path: {key}
        value: {flow(local.vhost[key])}""")
    for key, value in local.vhost["retry_policy"].items():
        if key not in RETRY_IN_POLICY:
            out.append(f"""    - type: type.googleapis.com/envoy.config.route.v3.RouteConfiguration
      name: {listener}
      operation:
        op: add
        jsonPath: "$.virtual_hosts[*].routes[*].route.retry_policy"
        path: {key}
        value: {flow(value)}""")

    local_upstream = next(iter(local.clusters.values()))["typed_extension_protocol_options"][OPTIONS_KEY]["http_filters"][0]
    plugin = local_upstream["typed_config"]["config"]
    config = router_config(local, cluster)
    keys = sorted({s["api_key_env"] for s in config.get("backends", {}).values() if "api_key_env" in s})
    upstream = {"name": UPSTREAM_ROOT_ID, "root_id": UPSTREAM_ROOT_ID, "vm_config": {
        "vm_id": router_vm, "runtime": "envoy.wasm.runtime.v8",
        "code": {"remote": {"http_uri": {"uri": f"{WASM_BASE_URL}/tollgate_router_wasm.wasm",
                                         "cluster": WASM_FETCH_CLUSTER, "timeout": "10s"},
                            "sha256": "${TOLLGATE_ROUTER_WASM_SHA256}", "retry_policy": {"num_retries": 10}}}},
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": json.dumps(config, separators=(",", ":"))},
        "fail_open": plugin["fail_open"]}
    if keys:
        upstream["vm_config"]["environment_variables"] = {"host_env_keys": keys}
    if "allow_on_headers_stop_iteration" in plugin:
        upstream["allow_on_headers_stop_iteration"] = plugin["allow_on_headers_stop_iteration"]
    filters = [{"name": UPSTREAM_ROOT_ID, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": upstream}},
        {"name": "envoy.filters.http.upstream_codec", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}}]
    out.append(f"""
    # 3. The router's per-attempt half (root {UPSTREAM_ROOT_ID}), as an upstream
    #    HTTP filter of every rule's cluster: it runs once per try, after Envoy
    #    picked the host, and rewrites the request for the backend reached.
    #    Same plugin settings as locally, same VM id as the router filter (so
    #    both halves share the backends' state), module fetched through the
    #    bootstrap cluster `{WASM_FETCH_CLUSTER}` (10-gateway.yaml) from the router's
    #    URL. Envoy Gateway writes HttpProtocolOptions only for clusters that need
    #    them: TLS Backends' clusters have one (auto_config) and get `http_filters`
    #    added; plain Services' clusters get the whole object (HTTP/1.1, as
    #    Envoy Gateway would set it).""")
    routes = local.routes()
    first_tls = first_plain = True
    for i, route in enumerate(routes):
        names = [local.chain(c)[0] for c, _ in route["targets"]]
        tls = {cluster.is_tls(n) for n in names}
        assert len(tls) == 1, f"{route['name']} mixes TLS Backends and plain Services"
        out.append(f"""    - type: type.googleapis.com/envoy.config.cluster.v3.Cluster
      name: httproute/{NAMESPACE}/{ROUTE}/rule/{i}
      operation:
        op: add""")
        if tls == {True}:
            out.append(f"        path: /typed_extension_protocol_options/{OPTIONS_KEY}/http_filters")
            out.append("        value: " + ("&upstream_filters\n" + block(filters, 10) if first_tls else "*upstream_filters"))
            first_tls = False
        else:
            out.append(f"        path: /typed_extension_protocol_options/{OPTIONS_KEY}")
            if first_plain:
                options = {"@type": f"type.googleapis.com/{OPTIONS_KEY}",
                           "explicit_http_config": {"http_protocol_options": {}}}
                filters_text = "*upstream_filters" if not first_tls else "&upstream_filters\n" + block(filters, 12)
                first_tls = False
                out.append("        value: &service_protocol_options\n" + block(options, 10)
                           + "\n          http_filters: " + filters_text)
                first_plain = False
            else:
                out.append("        value: *service_protocol_options")
    out.append("""
    # 4. Each endpoint names its backend in its metadata, which the per-attempt
    #    filter reads to know which backend a try reached (as locally). Services'
    #    endpoints come through EDS (a ClusterLoadAssignment per cluster, one
    #    locality per backendRef, in order); a Backend's FQDN endpoint is in its
    #    cluster's load_assignment.""")
    for i, route in enumerate(routes):
        for j, (cluster_name, _) in enumerate(route["targets"]):
            backend = local.chain(cluster_name)[0]
            if cluster.is_tls(backend) or backend in cluster.backends:
                kind, path = "envoy.config.cluster.v3.Cluster", f"$.load_assignment.endpoints[{j}].lb_endpoints[*]"
            else:
                kind, path = "envoy.config.endpoint.v3.ClusterLoadAssignment", f"$.endpoints[{j}].lb_endpoints[*]"
            out.append(f"""    - type: type.googleapis.com/{kind}
      name: httproute/{NAMESPACE}/{ROUTE}/rule/{i}
      operation:
        op: add
        jsonPath: "{path}"
        path: metadata/filter_metadata/tollgate
        value: {flow(local.metadata(backend))}""")

    name = local.guard["cluster"]
    local_cluster = local.clusters[name]
    address, port = cluster.grpc_address(RATELIMIT_SERVICE)
    ratelimit = {
        "name": name, "type": "STRICT_DNS", "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": local_cluster["connect_timeout"],
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}}]}]},
        "typed_extension_protocol_options": local_cluster["typed_extension_protocol_options"]}
    out.append(f"""
    # 5. The cluster the guard calls with dispatch_grpc_call, named as its
    #    `cluster`: EnvoyExtensionPolicy cannot declare one. An `add` with an
    #    empty `path` and no `jsonPath` adds `value` as a new resource; `name`
    #    is required but not looked up, and `path: ""` must be there (Envoy
    #    Gateway refuses a patch with neither path nor jsonPath). Envoy Gateway
    #    v1.9.0: internal/xds/translator/jsonpatch.go, and its test
    #    testdata/in/xds-ir/jsonpatch.yaml, which adds a rate-limit cluster so.
    #    Not in the EnvoyProxy's bootstrap like `{WASM_FETCH_CLUSTER}`: that is Envoy's
    #    command line (a change restarts the proxies), and only a cluster that
    #    xDS clusters need from the start has to be there; this one is first
    #    used by a request.
    #    HTTP/2 and the connect timeout as locally; STRICT_DNS on the headless
    #    Service {RATELIMIT_SERVICE} (26-ratelimit.yaml), whose name resolves to
    #    every ready replica, as `tollgate render` makes a cluster for a host name.
    - type: type.googleapis.com/envoy.config.cluster.v3.Cluster
      name: {name}
      operation:
        op: add
        path: ""
        value:
{block(ratelimit, 10)}""")
    out += fallback_chains(local, routes, filters)
    return "\n".join(out) + "\n"


def rule_cluster(index: int) -> str:
    return f"httproute/{NAMESPACE}/{ROUTE}/rule/{index}"


def chain_cluster(group: str, primary: str) -> str:
    return f"tollgate/chain/{group}/{primary}"


def fallback_chains(local: Local, routes: list[dict], upstream_filters: list[dict]) -> list[str]:
    """Section 6: each (model, backend) rule whose local cluster falls back
    (its priorities) routes to an aggregate cluster over the rules' clusters
    of that chain's backends, in order."""
    # The cluster that serves each backend alone: the first rule routing
    # only to it (the (model, backend) rules come first).
    alone: dict[str, int] = {}
    for i, route in enumerate(routes):
        if len(route["targets"]) == 1:
            alone.setdefault(local.chain(route["targets"][0][0])[0], i)
    out = [f"""
    # 6. Fallback chains. Locally each (model, backend) route has a cluster whose
    #    priorities are the chain a failure moves along: that backend, the
    #    group's others, the fallback groups'. Envoy Gateway gives each rule a
    #    cluster of its own backend only, and gives a rule that mixes Services
    #    and FQDN Backends a cluster per backendRef behind weighted_clusters,
    #    where a retry cannot fall over (v1.9.0 internal/ir/xds.go,
    #    NeedsClusterPerSetting). So each such rule's route is pointed at an
    #    aggregate cluster (envoy.clusters.aggregate) over the rules' clusters of
    #    the chain's backends, in order: Envoy linearises their priorities, so
    #    the virtual host's retries with previous_priorities move down the chain
    #    as locally, each child keeping its own TLS, DNS and health checks. The
    #    per-attempt filter of an attempt is the route's cluster's, so the
    #    aggregate carries it too (Envoy 1.40: tests/e2e/test_gateway_api.py
    #    runs the same shape in real Envoy)."""]
    for i, route in enumerate(routes):
        if len(route["targets"]) != 1:
            continue
        chain = local.chain(route["targets"][0][0])
        headers = dict(route["headers"])
        if len(chain) < 2 or set(headers) != {"x-ai-model", "x-ai-backend"}:
            continue
        name = chain_cluster(headers["x-ai-model"], headers["x-ai-backend"])
        aggregate = {
            "name": name,
            "connect_timeout": "1s",
            "lb_policy": "CLUSTER_PROVIDED",
            "cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                "clusters": [rule_cluster(alone[backend]) for backend in chain]}},
            "typed_extension_protocol_options": {OPTIONS_KEY: {
                "@type": f"type.googleapis.com/{OPTIONS_KEY}",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": "UPSTREAM_FILTERS"}},
        }
        text = block(aggregate, 10).replace("http_filters: UPSTREAM_FILTERS", "http_filters: *upstream_filters")
        out.append(f"""    - type: type.googleapis.com/envoy.config.cluster.v3.Cluster
      name: {name}
      operation:
        op: add
        path: ""
        value:
{text}
    - type: type.googleapis.com/envoy.config.route.v3.RouteConfiguration
      name: {NAMESPACE}/{GATEWAY}/{LISTENER}
      operation:
        op: replace
        jsonPath: "$.virtual_hosts[*].routes[?(@.route.cluster == '{rule_cluster(i)}')].route"
        path: cluster
        value: {name}""")
    return out


def generate() -> dict[Path, str]:
    local, cluster = Local(), Cluster()
    return {
        HERE / "25-ratelimit-config.yaml": ratelimit_config_map(),
        HERE / "30-httproute.yaml": httproute(local, cluster),
        HERE / "40-backendtrafficpolicy.yaml": traffic_policies(local, cluster),
        HERE / "50-envoyextensionpolicy.yaml": extension_policy(local, cluster),
        HERE / "60-envoypatchpolicy.yaml": patch_policy(local, cluster),
    }


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for path, text in generate().items():
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(path.relative_to(ROOT))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale (run `python3 gateway-api/generate.py`): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
