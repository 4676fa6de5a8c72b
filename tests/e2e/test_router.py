"""The router in real Envoy: tiers, models, aliases, balancing, fallback with
per-attempt rewrites, retry-after, cool-down and credentials."""

import json
import time

import httpx
import pytest

from harness import gateway_bootstrap, start_envoy_variant, start_gateway, variant_config


def chat(model=None, **extra):
    body = {"messages": [{"role": "user", "content": "Route me"}], **extra}
    if model is not None:
        body["model"] = model
    return body


def received_models(gw, backend):
    return [r["model"] for r in gw.mock_requests(backend)]


def failing(*backends, status="503", extra=()):
    """A config change making these mock backends answer every request with `status`."""
    def change(config):
        for backend in config["backends"]:
            if backend["name"] in backends:
                backend["mock_args"] = ["--fail-status", status, *extra]
    return change


@pytest.fixture(scope="module")
def client(gateway):
    with httpx.Client(base_url=gateway.url, timeout=10) as c:
        yield c


def test_tiers_route_to_their_backends(fresh_mocks, client):
    for tier, backend, model in [("fast", "vllm-8b", "llama-8b"), ("quality", "vllm-70b", "llama-70b")]:
        r = client.post("/v1/chat/completions", json=chat("auto"), headers={"x-model-tier": tier})
        assert r.status_code == 200, r.text
        assert r.headers["x-tollgate-backend"] == backend
        assert r.headers["x-mock-backend"] == backend
        assert received_models(fresh_mocks, backend)[-1] == model, "the tier's model was filled in"


def test_clients_cannot_pick_a_route_with_the_decision_headers(client):
    forged = {"x-ai-model": "gpt-4-turbo", "x-ai-backend": "openai"}
    # Neither a model nor a tier: the default split serves it, not the forged route.
    r = client.post("/v1/chat/completions", json=chat("auto"), headers=forged)
    assert r.status_code == 200 and r.headers["x-mock-backend"] in ("vllm-70b", "nim-70b")
    r = client.get("/v1/models", headers=forged)
    assert r.status_code == 200 and r.headers["x-mock-backend"] in ("vllm-70b", "nim-70b")


def test_models_and_aliases_are_rewritten_per_backend(fresh_mocks, client):
    r = client.post("/v1/chat/completions", json=chat("gpt-4"))
    assert r.status_code == 200 and r.headers["x-tollgate-backend"] == "openai"
    assert received_models(fresh_mocks, "openai") == ["gpt-4-turbo"], "alias resolved to the group's model"
    r = client.post("/v1/messages", json={"model": "claude", "max_tokens": 32,
                                          "messages": [{"role": "user", "content": "hi"}]},
                    headers={"x-tollgate-team": "search"})
    assert r.status_code == 200 and r.headers["x-tollgate-backend"] == "anthropic"
    assert received_models(fresh_mocks, "anthropic") == ["claude-sonnet-4-20250514"]
    # Internal routing headers and the caller's team never reach a provider.
    sent = fresh_mocks.mock_requests("anthropic")[-1]["headers"]
    assert not [h for h in sent if h.startswith("x-ai-") or h == "x-tollgate-team"]


def test_errors_are_openai_shaped(client):
    r = client.post("/v1/chat/completions", json=chat("no-such-model"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.post("/v1/chat/completions", json=chat("llama-8b"), headers={"x-model-tier": "platinum"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_tier"


def split(client, n, **request):
    counts = {}
    for _ in range(n):
        r = client.post("/v1/chat/completions", **request)
        assert r.status_code == 200, r.text
        backend = r.headers["x-mock-backend"]
        counts[backend] = counts.get(backend, 0) + 1
    return counts


def test_router_balances_a_model_group_90_10(fresh_mocks, client):
    counts = split(client, 2000, json=chat("llama-70b"))
    assert set(counts) == {"vllm-70b", "nim-70b"}
    share = counts["vllm-70b"] / 2000
    assert 0.87 <= share <= 0.93, counts
    assert set(received_models(fresh_mocks, "nim-70b")) == {"meta/llama-3.1-70b-instruct"}


def test_default_route_is_a_weighted_canary_90_10(fresh_mocks, client):
    counts = split(client, 2000, json=chat("auto"))
    share = counts.get("vllm-70b", 0) / 2000
    assert 0.87 <= share <= 0.93, counts
    assert set(counts) == {"vllm-70b", "nim-70b"}


def test_fallback_on_503_rewrites_each_attempt(tmp_path):
    gw = start_gateway(tmp_path / "gw", config=variant_config(tmp_path, failing("vllm-70b", "nim-70b")))
    try:
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat("llama-70b"), timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["x-tollgate-backend"] == "openai"
        assert r.headers["x-tollgate-attempts"] == "3"
        assert r.json()["model"] == "gpt-4-turbo"
        assert received_models(gw, "openai") == ["gpt-4-turbo"]
        tried = received_models(gw, "vllm-70b") + received_models(gw, "nim-70b")
        assert sorted(tried) == ["llama-70b", "meta/llama-3.1-70b-instruct"], "each try got its backend's model id"

        # A stream falls back the same way, and arrives whole.
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=chat("llama-70b", stream=True),
                          timeout=10) as s:
            assert s.headers["x-tollgate-backend"] == "openai"
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert all(json.loads(e[6:])["model"] == "gpt-4-turbo" for e in events[:-1])
    finally:
        gw.stop()


def test_a_fallback_after_a_translated_try_speaks_the_clients_api(tmp_path):
    """An OpenAI client asks for Claude; Anthropic fails and the fallback is
    OpenAI-compatible. All tries share one header map, so the retry must send
    the client's chat request, not the path the failed try was rewritten to."""
    def change(config):
        failing("anthropic")(config)
        config["models"]["claude-sonnet-4"]["fallbacks"] = ["gpt-4-turbo"]

    gw = start_gateway(tmp_path / "gw", config=variant_config(tmp_path, change))
    try:
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat("claude-sonnet-4"), timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["x-tollgate-backend"] == "openai"
        assert r.headers["x-tollgate-attempts"] == "2"
        assert r.json()["object"] == "chat.completion"
        assert gw.mock_requests("anthropic")[-1]["path"] == "/v1/messages"
        sent = gw.mock_requests("openai")[-1]
        assert (sent["path"], sent["model"]) == ("/v1/chat/completions", "gpt-4-turbo")
    finally:
        gw.stop()


def test_429_with_retry_after_moves_on_after_waiting(tmp_path):
    config = variant_config(tmp_path, failing("vllm-70b", status="429", extra=["--retry-after", "1"]))
    gw = start_gateway(tmp_path / "gw", config=config)
    try:
        started = time.monotonic()
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat("auto"), headers={"x-model-tier": "quality"},
                       timeout=10)
        elapsed = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert r.headers["x-tollgate-backend"] == "nim-70b"
        assert r.headers["x-tollgate-attempts"] == "2"
        assert elapsed >= 0.9, f"retry-after: 1 was not honoured ({elapsed:.2f}s)"
        assert received_models(gw, "nim-70b") == ["meta/llama-3.1-70b-instruct"]
    finally:
        gw.stop()


def test_failing_backend_cools_down(tmp_path):
    gw = start_gateway(tmp_path / "gw", config=variant_config(tmp_path, failing("vllm-70b")))
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            for _ in range(40):
                r = c.post("/v1/chat/completions", json=chat("llama-70b"))
                assert r.status_code == 200 and r.headers["x-tollgate-backend"] == "nim-70b"
        # Without cool-down ~36 of 40 requests would try vllm-70b first.
        tries = len(gw.mock_requests("vllm-70b"))
        assert tries <= 6, f"vllm-70b was tried {tries} times"
    finally:
        gw.stop()


def test_backend_keys_are_injected_and_never_dumped(tmp_path, monkeypatch):
    monkeypatch.setenv("TOLLGATE_TEST_OPENAI_KEY", "sk-test-e2e-secret")
    key_file = tmp_path / "anthropic.key"
    key_file.write_text("sk-ant-file-secret\n")

    def change(config):
        for backend in config["backends"]:
            if backend["name"] == "openai":
                backend["api_key_env"] = "TOLLGATE_TEST_OPENAI_KEY"
            if backend["name"] == "anthropic":
                backend["api_key_file"] = str(key_file)

    gw = start_gateway(tmp_path / "gw", config=variant_config(tmp_path, change))
    try:
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat("gpt-4-turbo"),
                       headers={"authorization": "Bearer client-gateway-key"}, timeout=10)
        assert r.status_code == 200
        assert gw.mock_requests("openai")[-1]["headers"]["authorization"] == "Bearer sk-test-e2e-secret"
        r = httpx.post(f"{gw.url}/v1/messages", json={"model": "claude-sonnet-4", "max_tokens": 16,
                                                      "messages": [{"role": "user", "content": "hi"}]},
                       headers={"x-api-key": "client-key"}, timeout=10)
        assert r.status_code == 200
        sent = gw.mock_requests("anthropic")[-1]["headers"]
        assert sent["x-api-key"] == "sk-ant-file-secret"
        assert sent["anthropic-version"] == "2023-06-01"
        dump = httpx.get(f"{gw.admin_url}/config_dump", timeout=10).text
        stats = httpx.get(f"{gw.admin_url}/stats", timeout=10).text
        logs = gw.logs()
        for secret in ("sk-test-e2e-secret", "sk-ant-file-secret"):
            assert secret not in dump and secret not in stats and secret not in logs
        assert "TOLLGATE_TEST_OPENAI_KEY" in dump, "only the variable's name is configured"
    finally:
        gw.stop()


PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def as_aggregates(bootstrap: dict) -> dict:
    """The shape gateway-api/60-envoypatchpolicy.yaml gives Envoy Gateway's
    clusters: each local (model, backend) cluster that falls back becomes an
    aggregate over one cluster per backend of its chain, in order, carrying
    the per-attempt filter (the children keep theirs, as the rules' do)."""
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    for name, cluster in list(clusters.items()):
        if "~" not in name:  # `tollgate render` names them <group>~<backend>
            continue
        localities = sorted(cluster["load_assignment"]["endpoints"], key=lambda e: e.get("priority", 0))
        chain = [e["metadata"]["filter_metadata"]["tollgate"]["backend"] for loc in localities for e in loc["lb_endpoints"]]
        if len(chain) < 2:
            continue
        clusters[name] = {
            "name": name, "connect_timeout": "1s", "lb_policy": "CLUSTER_PROVIDED",
            "cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                "clusters": chain}},
            "typed_extension_protocol_options": {PROTOCOL_OPTIONS: cluster["typed_extension_protocol_options"][PROTOCOL_OPTIONS]},
        }
    bootstrap["static_resources"]["clusters"] = list(clusters.values())
    return bootstrap


def test_fallback_through_aggregate_clusters_as_in_kubernetes(tmp_path):
    """The Kubernetes manifests express fallback chains with aggregate clusters
    (Envoy Gateway gives each rule a cluster of its own backend). The same
    shape in the pinned Envoy: retries move down the chain across clusters and
    every try is rewritten for the backend it reaches."""
    gw = start_gateway(tmp_path / "gw", config=variant_config(tmp_path, failing("vllm-70b", "nim-70b")))
    variant = start_envoy_variant(as_aggregates(gateway_bootstrap(gw)), tmp_path / "aggregates")
    try:
        with httpx.Client(base_url=variant.url, timeout=10) as c:
            r = c.post("/v1/chat/completions", json=chat("llama-70b"))
        assert r.status_code == 200, r.text
        # vllm-70b, then nim-70b (each 503, or skipped once health checks see
        # them fail), then the fallback group's openai, as the local chain.
        assert r.headers["x-tollgate-backend"] == "openai"
        assert received_models(gw, "openai")[-1] == "gpt-4-turbo", "rewritten for the backend reached"
        tried = received_models(gw, "vllm-70b") + received_models(gw, "nim-70b")
        assert set(tried) <= {"llama-70b", "meta/llama-3.1-70b-instruct"}
        assert r.headers["x-tollgate-attempts"] == str(len(tried) + 1)
    finally:
        variant.stop()
        gw.stop()
