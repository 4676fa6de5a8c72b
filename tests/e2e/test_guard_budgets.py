"""Budgets enforced at admission by the guard in real Envoy, on the real
rate-limit service: a token budget reserving prompt + max_tokens and settling
actual use, a monthly dollar budget per API key, a per-model cap shared by
every caller, and many concurrent clients against one tight budget, whose
total spend stays within the documented bound (the crate documentation of
filters/guard: B + the excess of use over reservation of the requests in
flight at the last admission)."""

from __future__ import annotations

import calendar
import datetime
import re
import threading
import time
import uuid

import httpx
import pytest

from harness import start_gateway, variant_config

TOKENS = 400          # per user, per calendar month
KEY_USD = 0.01        # per API key, per calendar month
LLAMA_CAP_USD = 0.001  # llama-70b, every caller together
RACE_TOKENS = 3000    # per team, for the concurrency tests
# Prices of the example configuration, $/Mtok.
GPT4 = (10, 30)
LLAMA70 = (0.59, 0.79)


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    directory = tmp_path_factory.mktemp("guard-budgets")

    def change(config):
        config["filters"]["guard"]["budgets"] = [
            {"name": "user-tokens", "per": ["user"], "tokens": TOKENS, "window": "calendar_month"},
            {"name": "key-usd", "per": ["key"], "usd": KEY_USD, "window": "calendar_month"},
            {"name": "llama-cap", "per": ["model"], "models": ["llama-70b"], "usd": LLAMA_CAP_USD,
             "window": "calendar_month"},
            {"name": "team-tokens", "per": ["team"], "tokens": RACE_TOKENS, "window": "calendar_month"},
        ]
    gateway = start_gateway(directory / "gw", config=variant_config(directory, change))
    yield gateway
    gateway.stop()


def chat(model: str, max_tokens: int, content: str = "Hi") -> dict:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}


def post(client, gw, payload, headers) -> httpx.Response:
    return client.post(f"{gw.url}/v1/chat/completions", json=payload, headers=headers)


def spent(response: httpx.Response) -> int:
    usage = response.json()["usage"]
    return usage["prompt_tokens"] + usage["completion_tokens"]


def micro_usd(price: tuple[float, float], prompt: int, completion: int) -> int:
    """Micro-dollars, rounded up as the guard charges them."""
    nanos = prompt * round(price[0] * 1000) + completion * round(price[1] * 1000)
    return -(-nanos // 1000)


def seconds_to_month_end() -> int:
    now = datetime.datetime.now(datetime.timezone.utc)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) - int(now.timestamp())


def test_a_token_budget_reserves_the_estimate_and_settles_actual_use(gw):
    user = f"tok-{uuid.uuid4().hex[:8]}"
    headers = {"x-user-id": user}
    with httpx.Client(timeout=10) as client:
        # Reserved: the prompt, as the meter before the guard counted it with
        # tiktoken (the mock counts alike; the guard's own fallback, four
        # bytes a token, would say 3 + 1 + 8 + 3), plus max_tokens.
        letters = "a b c d e f g h i j k l m n o p"
        first = post(client, gw, chat("llama-8b", 50, letters), headers)
        assert first.status_code == 200, first.text
        counted = first.json()["usage"]["prompt_tokens"]
        assert counted != 3 + 1 + 8 + 3
        assert first.headers["x-ratelimit-limit-tokens"] == str(TOKENS)
        assert first.headers["x-ratelimit-remaining-tokens"] == str(TOKENS - (counted + 50))
        used = spent(first)
        prompt = 8  # of "Hi"

        # The first settled at its actual use: the unused 34 came back.
        second = post(client, gw, chat("llama-8b", 50), headers)
        assert second.headers["x-ratelimit-remaining-tokens"] == str(TOKENS - used - (prompt + 50))
        used += spent(second)

        # A response longer than its reservation is charged the excess.
        third = post(client, gw, chat("llama-8b", 50), {**headers, "x-mock-output-tokens": "120"})
        assert spent(third) == prompt + 120
        used += spent(third)
        fourth = post(client, gw, chat("llama-8b", 10), headers)
        assert fourth.headers["x-ratelimit-remaining-tokens"] == str(TOKENS - used - (prompt + 10))
        used += spent(fourth)

        # Until a reservation does not fit.
        while True:
            response = post(client, gw, chat("llama-8b", 50), headers)
            if response.status_code != 200:
                break
            used += spent(response)
        assert response.status_code == 429
        error = response.json()["error"]
        assert error["type"] == "tokens" and error["code"] == "rate_limit_exceeded"
        assert f"{TOKENS} tokens per calendar month, {used} used or reserved" in error["message"], error
        assert used + prompt + 50 > TOKENS >= used
        assert response.headers["x-ratelimit-remaining-tokens"] == str(TOKENS - used)
        assert abs(int(response.headers["retry-after"]) - seconds_to_month_end()) <= 5
        # A smaller request still fits.
        small = post(client, gw, chat("llama-8b", TOKENS - used - prompt), headers)
        assert small.status_code == 200, small.text


def test_a_monthly_dollar_budget_per_api_key(gw):
    key = f"sk-test-{uuid.uuid4().hex}"
    headers = {"authorization": f"Bearer {key}"}
    budget = round(KEY_USD * 1e6)
    used = 0
    with httpx.Client(timeout=10) as client:
        while True:
            response = post(client, gw, chat("gpt-4-turbo", 50), headers)
            if response.status_code != 200:
                break
            usage = response.json()["usage"]
            reserved = micro_usd(GPT4, usage["prompt_tokens"], 50)
            assert response.headers["x-ratelimit-limit-usd"] == "0.01"
            remaining = float(response.headers["x-ratelimit-remaining-usd"])
            assert round(remaining * 1e6) == budget - used - reserved
            used += micro_usd(GPT4, usage["prompt_tokens"], usage["completion_tokens"])
        assert response.status_code == 429
        error = response.json()["error"]
        assert error["type"] == "insufficient_quota" and error["code"] == "insufficient_quota"
        assert "$0.01 per calendar month" in error["message"], error
        assert abs(int(response.headers["retry-after"]) - seconds_to_month_end()) <= 5
        assert used <= budget
        # Another key has its own $0.01.
        other = post(client, gw, chat("gpt-4-turbo", 50), {"authorization": f"Bearer {key}-2"})
        assert other.status_code == 200


def test_a_per_model_cap_is_shared_by_every_caller(gw):
    used = 0
    refused = None
    with httpx.Client(timeout=10) as client:
        for n in range(200):
            response = post(client, gw, chat("llama-70b", 20), {"x-user-id": f"cap-{n}"})
            if response.status_code != 200:
                refused = response
                break
            usage = response.json()["usage"]
            used += micro_usd(LLAMA70, usage["prompt_tokens"], usage["completion_tokens"])
        assert refused is not None and refused.status_code == 429, "the cap was reached"
        assert "llama-cap" in refused.json()["error"]["message"]
        assert used <= LLAMA_CAP_USD * 1e6
        # Other models are not capped.
        assert post(client, gw, chat("gpt-4-turbo", 20), {"x-user-id": "cap-other"}).status_code == 200


def race(gw, team: str, clients: int, seconds: float, excess_every: int = 0, model: str = "llama-8b") -> tuple[int, int, int, int]:
    """`clients` concurrent clients of one team send requests (max_tokens 40,
    each held 30 ms by the mock) for `seconds`; every `excess_every`-th asks
    the mock for 120 completion tokens, beyond its reservation. Returns the
    tokens spent (from the responses' usage), the largest excess of use over
    reservation, and the numbers served and refused."""
    spend = 0
    largest_excess = 0
    served = refused = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    failures = []

    def client_loop(index: int):
        nonlocal spend, largest_excess, served, refused
        with httpx.Client(timeout=20) as client:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                headers = {"x-tollgate-team": team, "x-mock-latency-ms": "30"}
                excess = excess_every and (index + n) % excess_every == 0
                if excess:
                    headers["x-mock-output-tokens"] = "120"
                response = post(client, gw, chat(model, 40, "Hello there"), headers)
                with lock:
                    if response.status_code == 200:
                        usage = response.json()["usage"]
                        served += 1
                        spend += usage["prompt_tokens"] + usage["completion_tokens"]
                        largest_excess = max(largest_excess, usage["completion_tokens"] - 40)
                    elif response.status_code == 429:
                        refused += 1
                    else:
                        failures.append((response.status_code, response.text))
                if response.status_code == 429:
                    time.sleep(0.02)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    return spend, largest_excess, served, refused


def ledger_use(gw, team: str) -> int:
    """What the budget's ledger says the team used, read with one more request."""
    with httpx.Client(timeout=10) as client:
        probe = post(client, gw, chat("llama-8b", 1), {"x-tollgate-team": team})
    if probe.status_code == 429:
        return int(re.search(r", (\d+) used or reserved", probe.json()["error"]["message"]).group(1))
    reserved = probe.json()["usage"]["prompt_tokens"] + 1
    return RACE_TOKENS - int(probe.headers["x-ratelimit-remaining-tokens"]) - reserved


CLIENTS = 24


def test_concurrent_clients_never_overspend_a_budget_their_reservations_bound(gw):
    team = f"race-{uuid.uuid4().hex[:8]}"
    spend, excess, served, refused = race(gw, team, CLIENTS, 2.5)
    print(f"\nexact reservations: {served} served, {refused} refused, spent {spend} of {RACE_TOKENS}")
    assert excess <= 0
    assert refused > 0, "the budget was reached"
    # max_tokens bounds the completion and the prompt estimate is the
    # provider's count: the bound is the budget itself.
    assert spend <= RACE_TOKENS
    # Unused reservations were released: most of the budget was spent (with
    # no release it would stop near 16/40 of it).
    assert spend >= 0.7 * RACE_TOKENS
    # Every settlement landed: the ledger is the spend, to the token.
    assert ledger_use(gw, team) == spend


def test_concurrent_clients_overspend_by_at_most_the_excess_in_flight(gw):
    team = f"race-{uuid.uuid4().hex[:8]}"
    spend, excess, served, refused = race(gw, team, CLIENTS, 2.5, excess_every=3)
    bound = RACE_TOKENS + CLIENTS * excess
    print(f"\nwith excess: {served} served, {refused} refused, spent {spend} of {RACE_TOKENS} "
          f"(overshoot {spend - RACE_TOKENS}, bound {bound - RACE_TOKENS} = {CLIENTS} in flight x {excess})")
    assert excess == 120 - 40
    assert refused > 0
    assert spend <= bound
    assert ledger_use(gw, team) == spend


@pytest.fixture(scope="module")
def leased_gw(tmp_path_factory):
    directory = tmp_path_factory.mktemp("guard-leases")

    def change(config):
        config["filters"]["guard"]["budgets"] = [
            {"name": "team-leased", "per": ["team"], "tokens": RACE_TOKENS, "window": "calendar_month",
             "lease_fraction": 0.05},
        ]
    gateway = start_gateway(directory / "gw", config=variant_config(directory, change))
    yield gateway
    gateway.stop()


def test_leased_budgets_hold_under_concurrency_with_few_calls(leased_gw):
    team = f"race-{uuid.uuid4().hex[:8]}"
    calls_before = rls_calls(leased_gw)
    spend, excess, served, refused = race(leased_gw, team, CLIENTS, 2.5)
    calls = rls_calls(leased_gw) - calls_before
    print(f"\nleases of 150 tokens: {served} served, {refused} refused, spent {spend} of {RACE_TOKENS}, "
          f"{calls} calls to the service")
    assert excess <= 0
    assert refused > 0
    assert spend <= RACE_TOKENS
    # Each worker may keep up to two leases unused.
    assert spend >= 0.6 * RACE_TOKENS
    # Admitted requests mostly came out of leases, without a call (refusals
    # still ask the service).
    stats = dict(line.split(": ") for line in httpx.get(
        f"{leased_gw.admin_url}/stats", params={"filter": "tollgate_guard_allowed"}).text.splitlines())
    assert int(stats["wasmcustom.tollgate_guard_allowed_total"]) == served
    assert int(stats["wasmcustom.tollgate_guard_allowed_from_lease_total"]) >= served / 2


def rls_calls(gw) -> float:
    text = httpx.get(f"{gw.state['ratelimit']['http_url']}/metrics").text
    line = next(l for l in text.splitlines() if l.startswith("ratelimit_service_total_requests"))
    return float(line.rsplit(" ", 1)[1])
