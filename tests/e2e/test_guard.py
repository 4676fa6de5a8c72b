"""The guard's rate-limit path in real Envoy against the real rate-limit service
(services/ratelimit, in memory or on a real Redis): the seed's request limits
(100 an hour per user, 20 of them on the quality tier), caller identity by
virtual key or x-user-id, two Envoy instances enforcing one limit through one
Redis, and the service killed or slow under fail-open and fail-closed."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

import httpx
import openai
import pytest

from harness import start_gateway, variant_config
from ratelimit_support import Stack

ALICE_KEY = "sk-tollgate-demo-alice"  # demo keys of examples/tollgate.yaml: alice of team search,
BOB_KEY = "sk-tollgate-demo-bob"  # bob of team ads


def body(model: str = "llama-70b", max_tokens: int = 8, content: str = "Hi") -> dict:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}


def post(client: httpx.Client, gw, headers: dict | None = None, payload: dict | None = None) -> httpx.Response:
    return client.post(f"{gw.url}/v1/chat/completions", json=payload or body(), headers=headers or {})


def guard_stats(gw) -> dict[str, int]:
    text = httpx.get(f"{gw.admin_url}/stats", params={"filter": "tollgate_guard"}).text
    stats = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        stats[name.removeprefix("wasmcustom.")] = int(value)
    return stats


def away_from_window_edge(seconds: int, margin: float = 20.0) -> None:
    """Waits out the end of a fixed window (the service's hour), so a test's
    requests all fall in one window."""
    left = seconds - time.time() % seconds
    if left < margin:
        time.sleep(left + 1)


def error(response: httpx.Response) -> dict:
    return response.json()["error"]


def test_the_101st_request_of_a_user_in_an_hour_is_refused(gateway):
    away_from_window_edge(3600)
    user = f"user-{uuid.uuid4().hex[:8]}"
    before = guard_stats(gateway)
    with httpx.Client(timeout=10) as client:
        for n in range(1, 101):
            response = post(client, gateway, {"x-user-id": user})
            assert response.status_code == 200, f"request {n}: {response.status_code} {response.text}"
            # The remaining requests count down as the user spends them.
            assert response.headers["x-ratelimit-limit-requests"] == "100"
            assert response.headers["x-ratelimit-remaining-requests"] == str(100 - n)
        served = len(gateway.mock_requests("vllm-70b")) + len(gateway.mock_requests("nim-70b"))
        refused = post(client, gateway, {"x-user-id": user})
        assert refused.status_code == 429
        assert error(refused)["type"] == "requests"
        assert error(refused)["code"] == "rate_limit_exceeded"
        assert "100 requests per hour" in error(refused)["message"]
        assert refused.headers["x-ratelimit-limit-requests"] == "100"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        retry_after = int(refused.headers["retry-after"])
        assert 0 < retry_after <= 3600
        assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
        assert len(gateway.mock_requests("vllm-70b")) + len(gateway.mock_requests("nim-70b")) == served, \
            "a refused request never reaches a backend"
        # Another user is not affected.
        assert post(client, gateway, {"x-user-id": f"{user}-other"}).status_code == 200

    # The official SDK sees a RateLimitError with the headers.
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-local", max_retries=0,
                        default_headers={"x-user-id": user})
    with pytest.raises(openai.RateLimitError) as raised:
        sdk.chat.completions.create(**body())
    assert raised.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    after = guard_stats(gateway)
    assert after["tollgate_guard_over_limit_total"] - before["tollgate_guard_over_limit_total"] == 2
    assert after["tollgate_guard_allowed_total"] - before["tollgate_guard_allowed_total"] >= 101


def test_the_quality_tier_allows_20_of_them(gateway):
    away_from_window_edge(3600)
    user = f"user-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=10) as client:
        quality = {"x-user-id": user, "x-model-tier": "quality"}
        for n in range(1, 21):
            response = post(client, gateway, quality)
            assert response.status_code == 200, f"quality request {n}: {response.text}"
            assert response.headers["x-ratelimit-limit-requests"] == "20", "the tighter limit shows"
            assert response.headers["x-ratelimit-remaining-requests"] == str(20 - n)
        refused = post(client, gateway, quality)
        assert refused.status_code == 429
        assert "20 requests per hour" in error(refused)["message"]
        # The user's other requests only have the per-user limit (21 of 100 used).
        response = post(client, gateway, {"x-user-id": user})
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "100"
        assert response.headers["x-ratelimit-remaining-requests"] == "78"


def test_a_virtual_key_identifies_the_caller_and_stays_at_the_gateway(gateway):
    gateway.reset_mocks()
    with httpx.Client(timeout=10) as client:
        headers = {"authorization": f"Bearer {ALICE_KEY}", "x-user-id": "mallory", "x-tollgate-team": "ads"}
        first = post(client, gateway, headers, body("gpt-4-turbo"))
        headers["x-user-id"] = "someone-else"
        second = post(client, gateway, headers, body("gpt-4-turbo"))
    assert first.status_code == second.status_code == 200, first.text
    # Both counted against alice (the key's user), whatever x-user-id says.
    assert int(second.headers["x-ratelimit-remaining-requests"]) == int(first.headers["x-ratelimit-remaining-requests"]) - 1
    # The per-key dollar budget ($100 a month) and the model's cap ($50) apply: the tighter shows.
    assert second.headers["x-ratelimit-limit-usd"] == "50"
    sent = gateway.mock_requests("openai")[-1]["headers"]
    assert "authorization" not in sent and "x-api-key" not in sent, sent


def test_required_keys_refuse_other_callers_with_401(tmp_path):
    def change(config):
        config["filters"]["guard"]["identity"]["require_key"] = True
    gw = start_gateway(tmp_path / "gw", config=variant_config(tmp_path, change))
    try:
        with httpx.Client(timeout=10) as client:
            missing = post(client, gw, {"x-user-id": "bob"})
            assert missing.status_code == 401
            assert error(missing)["code"] == "invalid_api_key"
            wrong = post(client, gw, {"authorization": "Bearer sk-not-configured"})
            assert wrong.status_code == 401
            assert post(client, gw, {"x-api-key": ALICE_KEY}).status_code == 200
        sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-not-configured", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            sdk.chat.completions.create(**body())
        ok = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=ALICE_KEY, max_retries=0)
        assert ok.chat.completions.create(**body()).choices[0].message.content
        assert guard_stats(gw)["tollgate_guard_unauthorized_total"] == 3
    finally:
        gw.stop()


def test_a_keys_team_decides_a_tier_limited_to_teams_not_the_team_header(tmp_path):
    """The router checks a tier's allowed_teams before the guard (after it)
    sets the key's team: it knows the guard's keys, so a key of another team
    cannot borrow an allowed team's name in the header."""
    def change(config):
        config["tiers"]["research"] = {"model": "gpt-4-turbo", "allowed_teams": ["search"]}
    gw = start_gateway(tmp_path / "gw", config=variant_config(tmp_path, change))
    try:
        with httpx.Client(timeout=10) as client:
            alice = post(client, gw, {"authorization": f"Bearer {ALICE_KEY}", "x-model-tier": "research"})
            assert alice.status_code == 200, alice.text
            bob = post(client, gw, {"x-api-key": BOB_KEY, "x-tollgate-team": "search", "x-model-tier": "research"})
            assert bob.status_code == 403, bob.text
            assert error(bob)["code"] == "tier_not_allowed"
            # Without a configured key, the header an authentication layer in front sets.
            vouched = post(client, gw, {"x-tollgate-team": "search", "x-model-tier": "research"})
            assert vouched.status_code == 200, vouched.text
            assert post(client, gw, {"x-model-tier": "research"}).status_code == 403
        sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=BOB_KEY, max_retries=0,
                            default_headers={"x-tollgate-team": "search", "x-model-tier": "research"})
        with pytest.raises(openai.PermissionDeniedError):
            sdk.chat.completions.create(**body())
    finally:
        gw.stop()


# ---- two Envoy instances, one Redis -------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(stack: Stack) -> str:
    port = free_port()
    stack.spawn("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no"])
    for _ in range(200):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
            return f"redis://127.0.0.1:{port}/"
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (make deps installs it)")
def test_two_envoys_enforce_one_limit_through_one_redis(tmp_path, stack):
    away_from_window_edge(3600)
    redis_url = start_redis(stack)

    def change(config):
        # Each gateway starts its own replica of the service, both on one Redis.
        config["ratelimit"]["redis_url"] = redis_url
    config = variant_config(tmp_path, change)
    a = start_gateway(tmp_path / "a", config=config)
    b = start_gateway(tmp_path / "b", config=config)
    try:
        assert a.state["ratelimit"]["grpc"] != b.state["ratelimit"]["grpc"]
        user = f"user-{uuid.uuid4().hex[:8]}"
        statuses = []
        with httpx.Client(timeout=10) as client:
            for n in range(110):
                gw = a if n % 2 == 0 else b
                statuses.append(post(client, gw, {"x-user-id": user}).status_code)
        assert statuses[:100] == [200] * 100
        assert statuses[100:] == [429] * 10, "one global limit, not one per instance"
        # Both guards counted their share.
        assert guard_stats(a)["tollgate_guard_over_limit_total"] == 5
        assert guard_stats(b)["tollgate_guard_over_limit_total"] == 5
        # And both replicas' counters live in the one Redis.
        keys = subprocess.run(["redis-cli", "-u", redis_url, "--scan", "--pattern", f"ai-gateway_user_id_{user}_*"],
                              capture_output=True, text=True).stdout.split()
        assert len(keys) == 1, keys
    finally:
        a.stop()
        b.stop()


# ---- the service failing --------------------------------------------------------------------

def external_service_gateway(tmp_path, address: str, mode: str, timeout_ms: int = 100):
    def change(config):
        config["ratelimit"] = {"address": address}
        config["filters"]["guard"]["failure_mode"] = mode
        config["filters"]["guard"]["timeout_ms"] = timeout_ms
    return start_gateway(tmp_path / f"gw-{mode}", config=variant_config(tmp_path / mode, change))


def load(gw, seconds: float, workers: int = 4) -> list[tuple[float, int, float, str]]:
    """(start time, status, latency, error code) of every request of a few
    concurrent clients, each a different user (so no limit is reached)."""
    results = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(index: int):
        with httpx.Client(timeout=10) as client:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                started = time.monotonic()
                response = post(client, gw, {"x-user-id": f"load-{index}-{n}"})
                code = error(response).get("code", "") if response.status_code != 200 else ""
                with lock:
                    results.append((started, response.status_code, time.monotonic() - started, code))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("mode", ["allow", "deny"])
def test_the_service_killed_mid_load(tmp_path, stack, mode):
    port = stack.start_ratelimit()
    service = next(p for name, p in stack.processes if name == "ratelimit")
    gw = external_service_gateway(tmp_path, f"127.0.0.1:{port}", mode)
    try:
        killed_at = []

        def kill():
            time.sleep(1.0)
            killed_at.append(time.monotonic())
            service.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill)
        killer.start()
        results = load(gw, 3.0)
        killer.join()
        before = [r for r in results if r[0] < killed_at[0] - 0.05]
        after = [r for r in results if r[0] > killed_at[0] + 0.2]
        assert before and after, (len(before), len(after))
        assert all(status == 200 for _, status, _, _ in before)
        stats = guard_stats(gw)
        if mode == "allow":
            # Fail open: every request is served, the failures are counted.
            assert all(status == 200 for _, status, _, _ in after), {s for _, s, _, _ in after}
            assert stats["tollgate_guard_failed_open_total"] >= len(after)
        else:
            # Fail closed: refused with the configured status and an OpenAI body.
            assert all(status == 503 and code == "rate_limit_service_unavailable" for _, status, _, code in after)
            assert stats["tollgate_guard_failed_closed_total"] >= len(after)
        assert stats["tollgate_guard_rls_errors_total"] >= len(after)
        # A dead service costs no waiting: connections are refused at once.
        assert max(latency for _, _, latency, _ in after) < 1.0
    finally:
        gw.stop()


@pytest.mark.parametrize("mode", ["allow", "deny"])
def test_a_service_that_does_not_answer_times_out(tmp_path, mode):
    # A listener that accepts connections and never says a word (not even
    # the HTTP/2 preface): every call waits for the guard's timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    accepted = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                pass

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    gw = external_service_gateway(tmp_path, f"127.0.0.1:{silent.getsockname()[1]}", mode, timeout_ms=200)
    try:
        with httpx.Client(timeout=10) as client:
            for n in range(5):
                started = time.monotonic()
                response = post(client, gw, {"x-user-id": f"slow-{n}"})
                elapsed = time.monotonic() - started
                assert response.status_code == (200 if mode == "allow" else 503), response.text
                assert 0.19 <= elapsed < 2.0, elapsed
        stats = guard_stats(gw)
        assert stats["tollgate_guard_rls_timeouts_total"] == 5
        assert stats["tollgate_guard_failed_open_total" if mode == "allow" else "tollgate_guard_failed_closed_total"] == 5
    finally:
        gw.stop()
        stop.set()
        acceptor.join()
        for connection in accepted:
            connection.close()
        silent.close()


def test_the_demo_keys_hash_as_configured():
    import yaml
    from harness import DEFAULT_CONFIG
    keys = yaml.safe_load(DEFAULT_CONFIG.read_text())["filters"]["guard"]["identity"]["keys"]
    assert keys[0]["sha256"] == hashlib.sha256(ALICE_KEY.encode()).hexdigest()
