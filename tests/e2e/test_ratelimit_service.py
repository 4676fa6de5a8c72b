"""Envoy's own HTTP rate-limit filter against Tollgate's rate-limit service (the seed
configuration, examples/ratelimit/ai-gateway.yaml): 100 requests per user per hour,
20 per user per hour on the quality tier."""

import json
import shutil
import socket
import subprocess
import time

import httpx
import pytest

from ratelimit_support import SEED_CONFIG, Stack, bootstrap, validate


def get(client: httpx.Client, url: str, user: str | None, tier: str | None = None) -> httpx.Response:
    headers = {}
    if user is not None:
        headers["x-user-id"] = user
    if tier is not None:
        headers["x-model-tier"] = tier
    return client.get(f"{url}/healthz", headers=headers)


def test_bootstrap_passes_envoy_validate(tmp_path):
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(bootstrap(18081, 18082)))
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_ratelimit_filter_enforces_the_seed_limits(stack):
    rls = stack.start_ratelimit()
    url = stack.start_envoy(bootstrap(rls, stack.start_mock()))
    with httpx.Client(timeout=10) as client:
        for n in range(1, 101):
            response = get(client, url, "alice")
            assert response.status_code == 200, f"request {n}: {response.status_code} {response.text}"
        response = get(client, url, "alice")
        assert response.status_code == 429
        assert response.headers.get("x-envoy-ratelimited") == "true"
        # Envoy's draft-03 headers come from the service's status: the limit and its window
        assert response.headers.get("x-ratelimit-limit", "").startswith("100, 100;w=3600")
        assert response.headers.get("x-ratelimit-remaining") == "0"

        # another user passes
        assert get(client, url, "bob").status_code == 200
        # no x-user-id: no descriptor, nothing to limit
        assert get(client, url, None).status_code == 200

        # the quality tier: 20 per user, while the user's 100 still count
        for n in range(1, 21):
            response = get(client, url, "carol", "quality")
            assert response.status_code == 200, f"quality request {n}: {response.status_code}"
        assert get(client, url, "carol", "quality").status_code == 429
        # carol's other tiers only have the per-user limit (21 of 100 used)
        assert get(client, url, "carol", "fast").status_code == 200

    metrics = httpx.get(f"http://127.0.0.1:{stack.ports['ratelimit-http']}/metrics").text
    assert 'ratelimit_service_rate_limit_over_limit{domain="ai-gateway",descriptor="user_id"} 1' in metrics
    assert ('ratelimit_service_rate_limit_over_limit{domain="ai-gateway",'
            'descriptor="user_id.model_tier_quality"} 1') in metrics


@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="redis-server not installed (make deps installs it)")
def test_two_replicas_behind_one_envoy_share_redis_counters(stack, tmp_path):
    port_probe = socket.socket()
    port_probe.bind(("127.0.0.1", 0))
    redis_port = port_probe.getsockname()[1]
    port_probe.close()
    stack.spawn("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no"])
    for _ in range(200):
        if subprocess.run(["redis-cli", "-p", str(redis_port), "ping"], capture_output=True).stdout.strip() == b"PONG":
            break
        time.sleep(0.05)
    redis = ["--redis-url", f"redis://127.0.0.1:{redis_port}/"]
    a = stack.start_ratelimit("rls-a", extra=redis)
    b = stack.start_ratelimit("rls-b", extra=redis)
    mock = stack.start_mock()
    config = bootstrap(a, mock)
    # the ratelimit cluster gets both replicas; Envoy balances calls between them
    endpoints = config["static_resources"]["clusters"][1]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    endpoints.append({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": b}}}})
    url = stack.start_envoy(config)
    with httpx.Client(timeout=10) as client:
        for n in range(1, 101):
            assert get(client, url, "dana").status_code == 200, f"request {n}"
        assert get(client, url, "dana").status_code == 429
    calls = []
    for name in ("rls-a", "rls-b"):
        text = httpx.get(f"http://127.0.0.1:{stack.ports[name + '-http']}/metrics").text
        line = next(l for l in text.splitlines() if l.startswith("ratelimit_service_total_requests{"))
        calls.append(float(line.rsplit(" ", 1)[1]))
    # both replicas answered, and together they counted to 100 once, not twice
    assert all(c > 0 for c in calls), calls
    assert sum(calls) == 101, calls


SEED_TEXT = """\
domain: ai-gateway
descriptors:
  - key: user_id
    rate_limit:
      unit: hour
      requests_per_unit: 100
    descriptors:
      - key: model_tier
        value: quality
        rate_limit:
          unit: hour
          requests_per_unit: 20
"""


def test_shipped_seed_config_is_the_issues_text_unchanged():
    assert SEED_CONFIG.read_text() == SEED_TEXT
