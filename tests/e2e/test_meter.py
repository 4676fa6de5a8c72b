"""The meter in real Envoy: provider usage and estimates, the stream rewrite for
clients that did not ask for usage, usage headers, the access log, responses an
upstream compresses anyway, and the stats through a real Prometheus server
evaluating the dashboard's queries."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import socket
import subprocess
import time
import uuid
import zlib
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from harness import DEFAULT_CONFIG, ROOT, prometheus_samples, start_gateway, stop_process, variant_config

RULES = ROOT / "examples/prometheus/tollgate-rules.yml"
DASHBOARD = ROOT / "examples/grafana/tollgate.json"
METER = yaml.safe_load(DEFAULT_CONFIG.read_text())["filters"]["meter"]
# $/Mtok → nano-dollars per token.
PRICES = {model: {k: round(v * 1000) for k, v in p.items()} for model, p in METER["models"].items()}
# The public model each mock backend serves in the example configuration.
BACKEND_MODEL = {"vllm-8b": "llama-8b", "vllm-70b": "llama-70b", "nim-70b": "llama-70b",
                 "openai": "gpt-4-turbo", "anthropic": "claude-sonnet-4"}
PROMPT = "Say hello to the gateway"


def chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], **extra}


def messages(model: str = "claude-sonnet-4", **extra) -> dict:
    return {"model": model, "max_tokens": 64, "system": "Be brief.",
            "messages": [{"role": "user", "content": PROMPT}], **extra}


def cost_nanos(model: str, prompt: int, completion: int) -> int:
    price = PRICES[model]
    return prompt * price["input"] + completion * price["output"]


def access_log(gw, request_id: str, timeout: float = 15.0) -> dict:
    """The access-log line of one request. Envoy writes it when the stream ends
    and flushes its log file every 10 s (--file-flush-interval-msec)."""
    path = Path(gw.state.get("access_log") or gw.run_dir / "access.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if request_id in line:
                entry = json.loads(line)
                if entry.get("request_id") == request_id:
                    return entry
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for {request_id}")


def sse_data(body: bytes) -> list[str]:
    return [line[len("data: "):] for line in body.decode().split("\n") if line.startswith("data: ")]


def masked(events: list[str]) -> list[str]:
    """Events with the fields that differ between two identical requests masked."""
    out = []
    for e in events:
        if e == "[DONE]":
            out.append(e)
            continue
        chunk = json.loads(e)
        chunk.pop("id", None)
        chunk.pop("created", None)
        out.append(json.dumps(chunk, sort_keys=True))
    return out


def stream(url: str, payload: dict, headers: dict | None = None) -> tuple[httpx.Response, bytes]:
    with httpx.stream("POST", url, json=payload, headers=headers or {}, timeout=15) as r:
        body = b"".join(r.iter_raw())
    return r, body


def mock_usage(gw) -> dict[str, dict[str, int]]:
    """Prompt and completion tokens the mocks served, by public model."""
    usage: dict[str, dict[str, int]] = {}
    for backend, model in BACKEND_MODEL.items():
        stats = httpx.get(f"{gw.backend_url(backend)}/mock/stats", timeout=5).json()
        for counts in stats["models"].values():
            u = usage.setdefault(model, {"prompt": 0, "completion": 0, "requests": 0})
            u["prompt"] += counts["prompt_tokens"]
            u["completion"] += counts["completion_tokens"]
            u["requests"] += counts["requests"]
    return usage


# ---- through the shared gateway ------------------------------------------------


def test_non_streamed_usage_headers_and_access_log(gateway):
    rid = str(uuid.uuid4())
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=chat("llama-8b"), timeout=10,
                   headers={"x-tollgate-team": "search", "x-model-tier": "fast", "authorization": "Bearer sk-test-key",
                            "x-request-id": rid})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    cost = cost_nanos("llama-8b", usage["prompt_tokens"], usage["completion_tokens"])
    assert r.headers["x-tollgate-input-tokens"] == str(usage["prompt_tokens"])
    assert r.headers["x-tollgate-output-tokens"] == str(usage["completion_tokens"])
    assert r.headers["x-tollgate-cost-usd"] == f"{cost // 10**9}.{cost % 10**9:09d}"
    assert r.headers["x-tollgate-usage"] == "reported"

    entry = access_log(gateway, rid)
    assert entry["metered_model"] == "llama-8b"
    assert entry["team"] == "search"
    assert entry["metered_tier"] == "fast"
    assert entry["backend"] == "vllm-8b"
    assert entry["input_tokens"] == str(usage["prompt_tokens"])
    assert entry["output_tokens"] == str(usage["completion_tokens"])
    assert entry["cost_usd"] == r.headers["x-tollgate-cost-usd"]
    assert entry["usage_source"] == "reported"
    assert entry["cache"] == "none"
    assert int(entry["ttft_ms"]) <= entry["duration_ms"]
    # The prompt estimate handed to the filters after the meter is tiktoken's
    # count by OpenAI's recipe, which is what the mock reports.
    assert entry["prompt_tokens_estimate"] == str(usage["prompt_tokens"])
    assert re.fullmatch(r"[0-9a-f]{16}", entry["key_id"])
    assert "sk-test-key" not in json.dumps(entry)


def test_a_stream_without_usage_is_exactly_what_the_client_asked_for(gateway):
    """The meter asks the upstream for the usage chunk and removes it (and the
    `"usage": null` it adds to every chunk) from what the client receives."""
    payload = chat("llama-8b", stream=True)
    rid = str(uuid.uuid4())
    r, through = stream(f"{gateway.url}/v1/chat/completions", payload, {"x-request-id": rid})
    assert r.status_code == 200
    _, direct = stream(f"{gateway.backend_url('vllm-8b')}/v1/chat/completions", payload)
    assert b"usage" not in through
    assert masked(sse_data(through)) == masked(sse_data(direct))
    assert through.endswith(b"data: [DONE]\n\n")
    # …and still metered from the provider's usage, which the meter asked for.
    entry = access_log(gateway, rid)
    assert entry["usage_source"] == "reported"
    _, with_usage = stream(f"{gateway.backend_url('vllm-8b')}/v1/chat/completions",
                           {**payload, "stream_options": {"include_usage": True}})
    reported = json.loads(sse_data(with_usage)[-2])["usage"]
    assert entry["output_tokens"] == str(reported["completion_tokens"])
    assert entry["input_tokens"] == str(reported["prompt_tokens"])


def test_a_client_asking_for_usage_gets_the_upstream_stream(gateway):
    payload = chat("llama-8b", stream=True, stream_options={"include_usage": True})
    _, through = stream(f"{gateway.url}/v1/chat/completions", payload)
    _, direct = stream(f"{gateway.backend_url('vllm-8b')}/v1/chat/completions", payload)
    assert masked(sse_data(through)) == masked(sse_data(direct))
    assert json.loads(sse_data(through)[-2])["usage"]["completion_tokens"] > 0


def test_anthropic_streams_pass_unchanged_and_are_metered(gateway):
    rid = str(uuid.uuid4())
    r, through = stream(f"{gateway.url}/v1/messages", messages(stream=True),
                        {"x-request-id": rid, "x-tollgate-team": "platform"})
    assert r.status_code == 200
    assert b"event: message_delta" in through
    entry = access_log(gateway, rid)
    delta = next(json.loads(d) for d in sse_data(through) if '"message_delta"' in d)
    start = next(json.loads(d) for d in sse_data(through) if '"message_start"' in d)
    assert entry["usage_source"] == "reported"
    assert entry["output_tokens"] == str(delta["usage"]["output_tokens"])
    assert entry["input_tokens"] == str(start["message"]["usage"]["input_tokens"])
    assert entry["team"] == "platform"


def test_missing_usage_is_estimated_and_equals_the_mocks_count(gateway):
    """With usage withheld, the meter counts with tiktoken o200k_base (the mock's
    encoding) and OpenAI's chat recipe: the estimate equals the mock's count."""
    cases = [
        ("/v1/chat/completions", chat("llama-8b"), False),
        ("/v1/chat/completions", chat("llama-8b", stream=True), True),
        ("/v1/messages", messages(), False),
        ("/v1/messages", messages(stream=True), True),
    ]
    for path, payload, streamed in cases:
        gateway.reset_mocks()
        rid = str(uuid.uuid4())
        headers = {"x-mock-no-usage": "1", "x-request-id": rid}
        if streamed:
            r, body = stream(f"{gateway.url}{path}", payload, headers)
            assert b'"usage"' not in body or path == "/v1/messages"
        else:
            r = httpx.post(f"{gateway.url}{path}", json=payload, headers=headers, timeout=10)
            assert "usage" not in r.json()
            assert r.headers["x-tollgate-usage"] == "estimated"
        assert r.status_code == 200
        served = mock_usage(gateway)[payload["model"]]
        entry = access_log(gateway, rid)
        assert entry["usage_source"] == "estimated", path
        assert entry["input_tokens"] == str(served["prompt"]), (path, streamed)
        assert entry["output_tokens"] == str(served["completion"]), (path, streamed)


def test_a_cut_stream_is_estimated_from_what_arrived(gateway):
    rid = str(uuid.uuid4())
    with pytest.raises(httpx.RemoteProtocolError):
        stream(f"{gateway.url}/v1/chat/completions", chat("llama-8b", stream=True),
               {"x-mock-cut-stream-after": "3", "x-request-id": rid})
    entry = access_log(gateway, rid)
    assert entry["usage_source"] == "estimated"
    assert entry["input_tokens"] == entry["prompt_tokens_estimate"]
    assert 1 <= int(entry["output_tokens"]) <= 6


def test_the_upstream_is_asked_for_identity_encoding(gateway):
    gateway.reset_mocks()
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=chat("llama-8b"),
                   headers={"accept-encoding": "gzip, br"}, timeout=10)
    assert r.status_code == 200
    assert gateway.mock_requests("vllm-8b")[-1]["headers"]["accept-encoding"] == "identity"


def test_a_very_large_response_passes_whole_and_is_metered(gateway):
    rid = str(uuid.uuid4())
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=chat("llama-8b"),
                   headers={"x-mock-output-tokens": "60000", "x-request-id": rid}, timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert len(r.content) > METER["max_held_response_bytes"]
    assert "x-tollgate-cost-usd" not in r.headers, "too large to hold the headers for"
    entry = access_log(gateway, rid)
    assert entry["usage_source"] == "reported"
    assert entry["output_tokens"] == str(body["usage"]["completion_tokens"]) == "60000"


def test_errors_are_counted_without_tokens(gateway):
    def samples():
        return prometheus_samples(httpx.get(f"{gateway.admin_url}/stats/prometheus", timeout=5).text)

    key = ('ai_gateway_requests_total{model="llama-8b",team="ads",tier="none",backend="vllm-8b",'
           'status="400",cache="none"}')
    tokens = 'ai_gateway_tokens_total{model="llama-8b",team="ads",direction="input"}'
    before = samples()
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=chat("llama-8b"),
                   headers={"x-mock-status": "400", "x-tollgate-team": "ads"}, timeout=10)
    assert r.status_code == 400
    assert "x-tollgate-cost-usd" not in r.headers
    after = samples()
    assert after[key] == before.get(key, 0) + 1
    assert after[tokens] == before[tokens]


# ---- an upstream that compresses anyway -----------------------------------------

# Backends whose mocks compress every response whatever the request accepts
# (mock-llm --force-encoding), as a misbehaving upstream does.
FORCED = {"vllm-8b": "gzip", "anthropic": "deflate", "openai": "br"}


@pytest.fixture(scope="module")
def compressing_gateway(tmp_path_factory):
    def change(config):
        for backend in config["backends"]:
            if backend["name"] in FORCED:
                backend["mock_args"] = ["--force-encoding", FORCED[backend["name"]]]
    config = variant_config(tmp_path_factory.mktemp("compressing-config"), change)
    gw = start_gateway(tmp_path_factory.mktemp("compressing"), config=config)
    yield gw
    gw.stop()


def stats_total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of a metric's series that carry these labels."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items()
               if k.split("{")[0] == name and all(w in k for w in wanted))


def test_compressed_responses_reach_the_client_as_sent_and_are_metered_as_reported(compressing_gateway):
    gw = compressing_gateway
    gw.reset_mocks()
    team = {"x-tollgate-team": "search"}
    # Paced streams: the mock compresses and flushes event by event.
    paced = {**team, "x-mock-token-delay-ms": "2"}
    chat_url = f"{gw.url}/v1/chat/completions"
    requests = {"llama-8b": 0, "claude-sonnet-4": 0, "gpt-4-turbo": 0}

    # gzip, non-streamed: the client's bytes are the upstream's gzip; the
    # usage headers are there as for an uncompressed body.
    r, raw = stream(chat_url, chat("llama-8b"), {**team, "accept-encoding": "gzip"})
    requests["llama-8b"] += 1
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["content-length"] == str(len(raw))
    body = json.loads(gzip.decompress(raw))
    assert r.headers["x-tollgate-usage"] == "reported"
    assert r.headers["x-tollgate-input-tokens"] == str(body["usage"]["prompt_tokens"])
    assert r.headers["x-tollgate-output-tokens"] == str(body["usage"]["completion_tokens"])
    assert gw.mock_requests("vllm-8b")[-1]["headers"]["accept-encoding"] == "identity", \
        "asked for identity, got gzip"

    # gzip streams: one whose client asked for usage, and one the meter asked
    # for, which it cannot rewrite compressed: that client gets the usage chunk.
    for payload in [chat("llama-8b", stream=True, stream_options={"include_usage": True}),
                    chat("llama-8b", stream=True)]:
        r, raw = stream(chat_url, payload, paced)
        requests["llama-8b"] += 1
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
        events = sse_data(gzip.decompress(raw))
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["usage"]["completion_tokens"] > 0

    # The OpenAI SDK (its httpx client decodes gzip).
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-test", max_retries=0, default_headers=team)
    reply = client.chat.completions.create(model="llama-8b", messages=[{"role": "user", "content": PROMPT}])
    requests["llama-8b"] += 1
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    pieces = []
    for chunk in client.chat.completions.create(model="llama-8b", messages=[{"role": "user", "content": PROMPT}],
                                                 stream=True, extra_headers={"x-mock-token-delay-ms": "2"}):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    requests["llama-8b"] += 1
    assert len(pieces) >= 3

    # deflate (zlib), Anthropic: a message and a stream.
    for payload, headers in [(messages(), team), (messages(stream=True), paced)]:
        r, raw = stream(f"{gw.url}/v1/messages", payload, headers)
        requests["claude-sonnet-4"] += 1
        assert r.status_code == 200 and r.headers["content-encoding"] == "deflate"
        text = zlib.decompress(raw).decode()
        assert '"usage"' in text
        if payload.get("stream"):
            assert sse_data(text.encode())[-1] == '{"type":"message_stop"}'
        else:
            assert r.headers["x-tollgate-usage"] == "reported"

    # br: passed on as it came (the client's own decoder reads it).
    for payload, headers in [(chat("gpt-4-turbo"), team), (chat("gpt-4-turbo", stream=True), paced)]:
        r, raw = stream(chat_url, payload, headers)
        requests["gpt-4-turbo"] += 1
        assert r.status_code == 200 and r.headers["content-encoding"] == "br"
        assert raw and not raw.startswith((b"{", b"data:"))

    # The stats count the mocks' reported usage, none of it estimated.
    served = mock_usage(gw)

    def counted():
        samples = prometheus_samples(httpx.get(f"{gw.admin_url}/stats/prometheus", timeout=5).text)
        return {model: (stats_total(samples, "ai_gateway_tokens_total", model=model, team="search", direction="input"),
                        stats_total(samples, "ai_gateway_tokens_total", model=model, team="search", direction="output"),
                        stats_total(samples, "ai_gateway_usage_source_total", model=model, source="reported"),
                        stats_total(samples, "ai_gateway_usage_source_total", model=model, source="estimated"))
                for model in requests}

    expected = {model: (served[model]["prompt"], served[model]["completion"], n, 0) for model, n in requests.items()}
    assert all(served[m]["requests"] == n for m, n in requests.items()), served
    deadline = time.monotonic() + 10
    while (got := counted()) != expected and time.monotonic() < deadline:
        time.sleep(0.2)  # a request is counted in Envoy's log phase, after its last byte
    assert got == expected


# ---- a real Prometheus ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, work: Path, target: str):
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed (make deps installs Debian's package)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "tollgate", "metrics_path": "/stats/prometheus",
                                "static_configs": [{"targets": [target]}]}],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(work / "prometheus.log", "w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.wait(lambda: httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200, "ready")

    def wait(self, condition, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if condition():
                    return
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.25)
        raise AssertionError(f"prometheus: timed out waiting for {what}")

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=5).json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def value(self, expr: str, at: float | None = None) -> float:
        result = self.query(expr, at)
        return float(result[0]["value"][1]) if result else float("nan")

    def stop(self):
        stop_process(self.process)
        self.log.close()


def dashboard_queries() -> dict[str, list[str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in panels}


@pytest.fixture(scope="module")
def priced_gateway(tmp_path_factory):
    """A fresh gateway, so its counters and the mocks' stats cover the same requests."""
    gw = start_gateway(tmp_path_factory.mktemp("priced"))
    yield gw
    gw.stop()


def test_prometheus_evaluates_the_dashboard_queries_to_the_mocks_usage(priced_gateway, tmp_path):
    gw = priced_gateway
    prom = Prometheus(tmp_path, gw.admin_url.removeprefix("http://"))
    try:
        # Every model × team series exists at 0 from the start, so increase()
        # over the day starts from a zero sample and is exact.
        prom.wait(lambda: prom.query("ai_gateway_request_cost_dollars_sum"), "the recording rules")

        big = {"x-mock-output-tokens": "5000"}
        traffic = [  # team, path, payload, headers, repeat
            ("search", "/v1/chat/completions", chat("llama-8b"), {}, 3),
            ("search", "/v1/chat/completions", chat("llama-8b", stream=True), {}, 2),
            ("search", "/v1/chat/completions", chat("llama-8b"), {"x-mock-no-usage": "1"}, 1),
            ("ads", "/v1/chat/completions", chat("gpt-4-turbo"), {}, 1),
            ("ads", "/v1/chat/completions", chat("gpt-4-turbo"), big, 1),  # ≈ $0.15
            ("platform", "/v1/messages", messages(), {}, 1),
            ("platform", "/v1/messages", messages(stream=True), {}, 1),
            ("platform", "/v1/messages", messages(max_tokens=30000), {"x-mock-output-tokens": "20000"}, 1),  # ≈ $0.30
            ("platform", "/v1/chat/completions", chat("llama-70b"), {}, 3),
        ]
        requests = 0
        for team, path, payload, headers, repeat in traffic:
            for _ in range(repeat):
                headers = {**headers, "x-tollgate-team": team}
                if payload.get("stream"):
                    r, _ = stream(f"{gw.url}{path}", payload, headers)
                else:
                    r = httpx.post(f"{gw.url}{path}", json=payload, headers=headers, timeout=30)
                assert r.status_code == 200
                requests += 1

        served = mock_usage(gw)
        assert sum(u["requests"] for u in served.values()) == requests
        model_cost = {m: cost_nanos(m, u["prompt"], u["completion"]) for m, u in served.items()}
        team_models = {"search": ["llama-8b"], "ads": ["gpt-4-turbo"], "platform": ["claude-sonnet-4", "llama-70b"]}
        team_cost = {t: sum(model_cost[m] for m in ms) for t, ms in team_models.items()}
        total = sum(model_cost.values())

        # Counters are live; histograms reach the admin endpoint at Envoy's
        # stats flush (5 s): wait for both in Prometheus.
        prom.wait(lambda: round(prom.value("sum(ai_gateway_request_cost_dollars_sum)") * 1e9) == total, "the cost", 40)
        prom.wait(lambda: prom.value("sum(ai_gateway_request_cost_dollars_count)") == requests, "the histogram", 40)
        # Evaluate at the newest sample: no extrapolation past it.
        at = prom.value("max(timestamp(ai_gateway_request_cost_dollars_sum))")
        queries = dashboard_queries()

        [per_team] = queries["Cost per team per day"]
        got = {r["metric"]["team"]: float(r["value"][1]) for r in prom.query(per_team, at)}
        for team, nanos in team_cost.items():
            assert abs(got[team] - nanos / 1e9) < 1e-9, (team, got[team], nanos)
        assert got.get("other", 0.0) == 0.0

        [top] = queries["Top models by cost (last day)"]
        got = {r["metric"]["model"]: float(r["value"][1]) for r in prom.query(top, at)}
        expected = dict(sorted(model_cost.items(), key=lambda kv: -kv[1])[:5])
        assert set(got) >= set(expected)
        for model, nanos in expected.items():
            assert abs(got[model] - nanos / 1e9) < 1e-9, (model, got[model], nanos)

        [ratio] = queries["Output / input token ratio"]
        completion = sum(u["completion"] for u in served.values())
        prompt = sum(u["prompt"] for u in served.values())
        assert abs(prom.value(ratio, at) - completion / prompt) < 1e-9

        # Labels as Prometheus sees them.
        assert prom.value('ai_gateway_tokens_total{model="llama-8b",team="search",direction="output"}', at) == \
            served["llama-8b"]["completion"]
        assert prom.value('sum(ai_gateway_usage_source_total{model="llama-8b",source="estimated"})', at) == 1

        # The seed's dollar buckets: all but the two big requests cost under $0.001.
        buckets = {r["metric"]["le"]: float(r["value"][1])
                   for r in prom.query("sum by (le) (ai_gateway_request_cost_dollars_bucket)", at)}
        assert buckets == {"0.001": requests - 2, "0.01": requests - 2, "0.05": requests - 2, "0.1": requests - 2,
                           "0.5": requests, "1.0": requests, "5.0": requests, "+Inf": requests}

        # Every dashboard query is valid PromQL over series that exist.
        for title, exprs in queries.items():
            for expr in exprs:
                prom.query(expr, at)
    finally:
        prom.stop()


# ---- the dashboard ---------------------------------------------------------------


def test_the_dashboard_parses_and_uses_only_emitted_metrics(priced_gateway):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    titles = [p["title"] for p in dashboard["panels"]]
    for wanted in ["Cost per team per day", "Top models by cost (last day)", "Output / input token ratio",
                   "Request latency", "Time to first token", "Error rate", "Cache hit ratio"]:
        assert wanted in titles

    # What the gateway emits (after traffic, so every histogram is there) and
    # what the recording rules derive from it.
    gw = priced_gateway
    httpx.post(f"{gw.url}/v1/chat/completions", json=chat("llama-8b"), timeout=10)
    stream(f"{gw.url}/v1/chat/completions", chat("llama-8b", stream=True))
    deadline = time.monotonic() + 15
    while True:
        text = httpx.get(f"{gw.admin_url}/stats/prometheus", timeout=5).text
        emitted = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
        if "ai_gateway_time_per_output_token_microseconds_bucket" in emitted or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    rules = yaml.safe_load(RULES.read_text())
    emitted |= {rule["record"] for group in rules["groups"] for rule in group["rules"]}

    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\b(?:ai_gateway|envoy)_[a-z_]+", target["expr"]))
            assert names, (panel["title"], target["expr"])
            assert names <= emitted, (panel["title"], names - emitted)
