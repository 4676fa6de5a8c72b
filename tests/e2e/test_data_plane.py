"""Traffic through the real Envoy with all three filters, against the mocks."""

import json
import uuid

import httpx

from harness import prometheus_samples, start_gateway, variant_config

CHAT = {"model": "llama-8b", "messages": [{"role": "user", "content": "Say hello to the gateway"}]}


def test_chat_completion_through_all_filters(fresh_mocks):
    gw = fresh_mocks
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0
    # The body's model routed it (router filter + clear_route_cache), not the 90/10 default.
    assert r.headers["x-mock-backend"] == "vllm-8b"
    assert gw.state["filters"] == ["router", "meter", "guard"]


def test_streamed_chat_through_all_filters(fresh_mocks):
    gw = fresh_mocks
    payload = {**CHAT, "model": "llama-8b", "stream": True, "stream_options": {"include_usage": True}}
    events = []
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=payload, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-mock-backend"] == "vllm-8b"
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content, "no content streamed"
    assert len(chunks) >= 4
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_body_model_routes_only_with_the_router(tmp_path):
    """Body-based routing needs the router (allow_on_headers_stop_iteration plus
    clear_route_cache): without it, a body naming llama-8b lands on the default split."""
    plain = start_gateway(tmp_path / "plain", filters="none")
    try:
        backends = set()
        for _ in range(20):
            r = httpx.post(f"{plain.url}/v1/chat/completions", json={**CHAT, "model": "llama-8b"}, timeout=10)
            assert r.status_code == 200
            backends.add(r.headers["x-mock-backend"])
        assert "vllm-8b" not in backends
        assert backends <= {"vllm-70b", "nim-70b"}
    finally:
        plain.stop()


def test_tier_header_routes(fresh_mocks):
    gw = fresh_mocks
    for tier, backend in [("fast", "vllm-8b"), ("quality", "vllm-70b")]:
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "model": "auto"},
                       headers={"x-model-tier": tier}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["x-mock-backend"] == backend


def test_upstream_filter_runs_once_per_attempt(fresh_mocks):
    """The router's upstream half runs per attempt: the first try fails with a 503,
    Envoy retries with each try numbered, and the second try's half answers with
    its number (the fallback tests show each try rewritten for its backend)."""
    gw = fresh_mocks
    key = str(uuid.uuid4())
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "model": "llama-8b"},
                   headers={"x-mock-fail-first": "1", "x-mock-fail-key": key}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["x-envoy-attempt-count"] == "2"
    tries = [q for q in gw.mock_requests("vllm-8b") if q["headers"].get("x-mock-fail-key") == key]
    assert [q["status"] for q in tries] == [503, 200]
    assert [q["headers"].get("x-envoy-attempt-count") for q in tries] == ["1", "2"]
    assert r.headers["x-tollgate-attempts"] == "2" and r.headers["x-tollgate-backend"] == "vllm-8b"


def test_malformed_json_gets_openai_error(gateway):
    r = httpx.post(f"{gateway.url}/v1/chat/completions", content=b'{"model": ',
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"


def test_oversized_body_gets_413(tmp_path):
    config = variant_config(tmp_path, lambda c: c["filters"]["router"].update(max_body_bytes=1000))
    gw = start_gateway(tmp_path / "gw", config=config)
    try:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=big, timeout=10)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=10)
        assert r.status_code == 200
    finally:
        gw.stop()


def test_prometheus_endpoint_is_scrapeable(gateway):
    httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10).raise_for_status()
    r = httpx.get(f"{gateway.admin_url}/stats/prometheus", timeout=10)
    assert r.status_code == 200
    samples = prometheus_samples(r.text)
    assert samples['envoy_cluster_upstream_rq_total{envoy_cluster_name="llama-8b~vllm-8b"}'] >= 1
    # Each filter's plugin is loaded (Envoy keeps per-plugin VM stats).
    for plugin in ("tollgate_router", "tollgate_router_upstream", "tollgate_meter", "tollgate_guard"):
        assert f"envoy_wasm_{plugin}_vm_reload_failure{{}}" in samples, plugin


def test_header_values_that_are_not_utf8_do_not_crash_a_filter(gateway):
    """HTTP allows obs-text bytes in header values; the SDK's header read would
    panic on them and abort the VM, failing every later request on it."""
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for _ in range(4):  # reach both workers' VMs
            r = client.post("/v1/chat/completions", json=CHAT,
                            headers={"x-model-tier": b"fast\xe9", "x-tollgate-team": b"caf\xe9"})
            assert r.status_code in (200, 400), r.text
        for _ in range(8):
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    envoy_log = open(gateway.state["envoy_log"]).read()
    assert "panicked" not in envoy_log
