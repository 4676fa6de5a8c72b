"""`make bench`'s host-call table: each filter again with every host call timed
in place (the wasm modules built with `--features call-timing`,
filters/host/src/call_timing.rs), under the same load. Each VM logs, every
1,000 finished contexts, how often each call ran and how long it took; the
sums give calls per request and the mean cost of each call with the filter's
real memory, code and call mix."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMED_WASM = ROOT / "target/wasm32-wasip1/call-timing"
RELEASE_WASM = ROOT / "target/wasm32-wasip1/release"
REPORT_PREFIX = "tollgate call timing: "
# Wasm contexts per request in the benchmark: the router also runs once per
# attempt (one attempt, no retries).
CONTEXTS_PER_REQUEST = {"router": 2, "meter": 1, "guard": 1}


def timed_bootstrap(bootstrap: dict, filters: str) -> dict:
    module = f"tollgate_{filters}_wasm.wasm"
    text = json.dumps(bootstrap).replace(str(RELEASE_WASM / module), str(TIMED_WASM / module))
    if str(TIMED_WASM / module) not in text:
        raise RuntimeError(f"{module} is not in the {filters} bootstrap")
    return json.loads(text)


def read_reports(log: Path) -> tuple[dict[str, list[int]], int]:
    """Calls → [count, nanoseconds] summed over every report, and the contexts they cover."""
    sums: dict[str, list[int]] = {}
    contexts = 0
    for line in log.read_text().splitlines():
        if REPORT_PREFIX not in line:
            continue
        report = json.loads(line.split(REPORT_PREFIX, 1)[1])
        timer_count = report.get("timer", [0, 0])[0]
        contexts += timer_count
        for call, (count, nanos) in report.items():
            total = sums.setdefault(call, [0, 0])
            total[0] += count
            total[1] += nanos
    return sums, contexts


def table(label: str, filters: str, sums: dict[str, list[int]], contexts: int) -> list[str]:
    requests = contexts / CONTEXTS_PER_REQUEST[filters]
    lines = []
    total = 0.0
    for call, (count, nanos) in sorted(sums.items(), key=lambda item: -item[1][1]):
        if call == "timer":
            continue
        per_request = count / requests
        micros = nanos / count / 1000
        total += per_request * micros
        lines.append(f"| {label} | `{call}` | {per_request:.2f} | {micros:.2f} | {per_request * micros:.1f} |")
    timer = sums.get("timer", [1, 0])
    lines.append(f"| {label} | **all calls** ({int(requests):,} requests; timing itself "
                 f"{timer[1] / max(timer[0], 1) / 1000:.2f} µs a call) | | | **{total:.1f}** |")
    return lines


def host_call_table(oha: str, targets: dict[str, tuple[str, dict, Path]], seconds: int, load) -> list[str]:
    """`targets`: label → (filters, bootstrap, work directory). `load(oha,
    url, pid)` runs the benchmark's load against one Envoy."""
    from harness import start_envoy_variant

    lines = [
        "",
        f"Host calls per request and their cost in place ({seconds} s of the same load per filter, "
        "each call timed with the host's clock; the timing adds its own cost, shown):",
        "",
        "| filter | host call | calls/request | µs/call | µs/request |",
        "|---|---|---:|---:|---:|",
    ]
    for label, (filters, bootstrap, work) in targets.items():
        variant = start_envoy_variant(timed_bootstrap(bootstrap, filters), work)
        try:
            load(oha, variant.url, variant.pid)
        finally:
            variant.stop()
        sums, contexts = read_reports(work / "envoy.log")
        if not contexts:
            raise RuntimeError(f"no call-timing reports in {work / 'envoy.log'}")
        lines += table(label, filters, sums, contexts)
    return lines

