"""`make bench`: POST chat completions at fixed concurrency against the mock
directly, plain Envoy, Envoy with each filter alone and with all filters.
Every case runs right after a run of plain Envoy and is reported as the
median of those paired ratios: this machine's speed drifts by tens of percent
within minutes, while two adjacent runs see the same machine."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from harness import gateway_bootstrap, start_envoy_variant, start_gateway, variant_config  # noqa: E402
from floor import ENVOY_RATELIMIT, FLOORS, envoy_ratelimit_bootstrap, floor_bootstrap  # noqa: E402
from host_calls import CONTEXTS_PER_REQUEST, host_call_table  # noqa: E402

BODY = json.dumps({"model": "llama-70b", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "Summarise the benefits of an AI gateway in one line."}]})
# Every target serves the same backend: the tier header routes to vllm-70b
# without the router, the body's model does with it. The user id puts the
# guard on its rate-limit path: one call to the rate-limit service per request
# (user, and user + quality tier, as examples/ratelimit/ai-gateway.yaml).
HEADERS = ["content-type: application/json", "x-model-tier: quality", "x-user-id: bench-user"]
GATEWAYS = {"plain Envoy": "none", "router": "router", "meter": "meter", "guard": "guard",
            "all filters": "all"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(oha: str, url: str, concurrency: int, seconds: int, pid: int) -> dict:
    before = cpu_seconds(pid)
    command = [oha, "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-c", str(concurrency),
               "-m", "POST", "-d", BODY]
    for header in HEADERS:
        command += ["-H", header]
    out = subprocess.run(command + [f"{url}/v1/chat/completions"], capture_output=True, text=True, check=True)
    cpu = cpu_seconds(pid) - before
    result = json.loads(out.stdout)
    statuses = result.get("statusCodeDistribution", {})
    ok = statuses.get("200", 0)
    total = sum(statuses.values())
    return {
        "rps": ok / seconds,
        "p50_ms": result["latencyPercentiles"]["p50"] * 1000,
        "p99_ms": result["latencyPercentiles"]["p99"] * 1000,
        "cpu_us_per_req": cpu / max(total, 1) * 1e6,
        "errors": total - ok,
    }


STREAM_BODY = json.dumps({"model": "llama-70b", "max_tokens": 16, "stream": True,
                          "messages": [{"role": "user", "content": "Summarise the benefits of an AI gateway in one line."}]})


def first_byte_ms(url: str) -> float:
    """Milliseconds from sending a streamed chat request to its first body byte
    (the client did not ask for usage: with the meter, the stream is rewritten)."""
    import http.client
    import time
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        headers = {"content-type": "application/json", "x-model-tier": "quality"}
        started = time.perf_counter()
        connection.request("POST", "/v1/chat/completions", body=STREAM_BODY, headers=headers)
        response = connection.getresponse()
        first = response.read1(1)
        elapsed = (time.perf_counter() - started) * 1000
        response.read()
        if response.status != 200 or not first:
            raise RuntimeError(f"stream failed: {response.status}")
        return elapsed
    finally:
        connection.close()


def stream_first_byte(targets: dict, labels: list[str], requests: int) -> list[str]:
    """Interleaved sequential streamed requests; median and p90 time to the
    first body byte per target, and the difference to plain Envoy."""
    samples = {label: [] for label in labels}
    for _ in range(requests):
        for label in labels:
            samples[label].append(first_byte_ms(targets[label][0]))
    base = statistics.median(samples["plain Envoy"])
    lines = ["", f"Streamed chat completions, time to first body byte, {requests} sequential requests per target, "
             "interleaved (concurrency 1):", "",
             "| target | median ms | p90 ms | median vs plain Envoy |", "|---|---:|---:|---:|"]
    for label in labels:
        values = sorted(samples[label])
        median = statistics.median(values)
        p90 = values[int(len(values) * 0.9) - 1]
        lines.append(f"| {label} | {median:.3f} | {p90:.3f} | {median - base:+.3f} ms |")
    return lines


def bench_limits(config: dict) -> None:
    """The example configuration with limits and budgets no run reaches, so
    every request takes the guard's full path and is admitted."""
    config["ratelimit"]["config"] = str(Path(__file__).resolve().parent / "ratelimit.yaml")
    for budget in config["filters"]["guard"]["budgets"]:
        if "usd" in budget:
            budget["usd"] = 1000  # the most a budget counts in micro-dollars
        else:
            budget["tokens"] = 10**9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--oha", default=".tools/bin/oha")
    parser.add_argument("--out", default="bench-results.md")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="16")
    parser.add_argument("--stream-requests", type=int, default=300,
                        help="streamed requests per target for the time-to-first-byte table (0: skip)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    work = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    config = variant_config(work / "config", bench_limits)
    gateways = {}
    variants = {}
    try:
        for label, filters in GATEWAYS.items():
            gateways[label] = start_gateway(work / filters, config=config, filters=filters)
        plain = gateway_bootstrap(gateways["plain Envoy"])
        for number, (label, (mode, per_attempt)) in enumerate(FLOORS.items()):
            variants[label] = start_envoy_variant(floor_bootstrap(plain, mode, per_attempt), work / f"floor-{number}")
        guard_bootstrap = gateway_bootstrap(gateways["guard"])
        guard_config = json.loads(config.read_text())["filters"]["guard"]
        ratelimit_cluster = next(c for c in guard_bootstrap["static_resources"]["clusters"]
                                 if c["name"] == guard_config["cluster"])
        variants[ENVOY_RATELIMIT] = start_envoy_variant(
            envoy_ratelimit_bootstrap(plain, ratelimit_cluster, guard_config["domain"]), work / "envoy-ratelimit")
        targets = {"mock direct": (gateways["plain Envoy"].backend_url("vllm-70b"),
                                   gateways["plain Envoy"].state["pids"]["vllm-70b"])}
        for label, gw in gateways.items():
            targets[label] = (gw.url, gw.state["envoy_pid"])
        for label, variant in variants.items():
            targets[label] = (variant.url, variant.pid)

        samples: dict[tuple[str, int], list[dict]] = {}
        ratios: dict[tuple[str, int], list[float]] = {}
        plain_url, plain_pid = targets["plain Envoy"]
        for round_number in range(args.rounds):
            for concurrency in levels:
                for label, (url, pid) in targets.items():
                    if label == "plain Envoy":
                        continue
                    pair = {"plain Envoy": load(args.oha, plain_url, concurrency, args.seconds, plain_pid),
                            label: load(args.oha, url, concurrency, args.seconds, pid)}
                    for name, sample in pair.items():
                        samples.setdefault((name, concurrency), []).append(sample)
                    ratio = pair[label]["rps"] / max(pair["plain Envoy"]["rps"], 1e-9)
                    ratios.setdefault((label, concurrency), []).append(ratio)
                    sample = pair[label]
                    print(f"round {round_number + 1} c={concurrency:<3} {label:<12} "
                          f"{sample['rps']:>9.0f} rps  p50 {sample['p50_ms']:.2f} ms  "
                          f"p99 {sample['p99_ms']:.2f} ms  errors {sample['errors']}  "
                          f"{ratio:.2f}× the plain Envoy run before it", flush=True)
        first_byte = []
        if args.stream_requests:
            first_byte = stream_first_byte(targets, ["plain Envoy", "meter", "all filters"], args.stream_requests)
        timed = {label: (filters, gateway_bootstrap(gateways[label]), work / f"timed-{filters}")
                 for label, filters in GATEWAYS.items() if filters in CONTEXTS_PER_REQUEST}
        host_calls = host_call_table(args.oha, timed, args.seconds,
                                     lambda oha, url, pid: load(oha, url, 16, args.seconds, pid))
    finally:
        for variant in variants.values():
            variant.stop()
        for gw in gateways.values():
            gw.stop()

    def median(label, concurrency, key):
        return statistics.median(s[key] for s in samples[(label, concurrency)])

    lines = [
        f"Chat completion POSTs, {args.seconds} s per case, {args.rounds} rounds, medians; each case runs right "
        "after a run of plain Envoy, and 'RPS vs plain Envoy' is the median of those paired ratios (min–max in "
        "brackets); "
        f"Envoy with 2 worker threads; load generator oha on the same 2-core machine. "
        "CPU is the server process's (mock for 'mock direct', Envoy otherwise) user+system time per request. "
        "The guard calls the rate-limit service for every request (limits from tests/bench/ratelimit.yaml). "
        "The floor rows are plain Envoy with a wasm filter that does nothing but pass, hold the request "
        "body (as the router must, to route on `model`; with a pass-through per attempt as well, the router's "
        "shape), hold both bodies (as the meter must, to read `usage`), or make only the host calls the "
        "router's or the meter's issue requires at the least, with fixed values and no logic; 'Envoy ratelimit "
        "filter' is plain Envoy asking the guard's rate-limit service the same two limits with Envoy's own "
        "filter: tests/bench/floor.py.",
        "",
        "| target | concurrency | RPS | p50 ms | p99 ms | RPS vs plain Envoy | server CPU µs/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for concurrency in levels:
        for label in targets:
            rps = median(label, concurrency, "rps")
            errors = sum(s["errors"] for s in samples[(label, concurrency)])
            ratio = "1.00×"
            if label != "plain Envoy":
                paired = ratios[(label, concurrency)]
                ratio = f"{statistics.median(paired):.2f}× [{min(paired):.2f}–{max(paired):.2f}]"
            lines.append(f"| {label} | {concurrency} | {rps:,.0f} | {median(label, concurrency, 'p50_ms'):.2f} | "
                         f"{median(label, concurrency, 'p99_ms'):.2f} | {ratio} | "
                         f"{median(label, concurrency, 'cpu_us_per_req'):.0f} | {errors} |")
    lines += first_byte
    lines += host_calls
    report = "\n".join(lines) + "\n"
    Path(args.out).write_text(report)
    print("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
