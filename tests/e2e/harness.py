"""Starts a real gateway for tests: `tollgate run --ephemeral` brings up the mock
backends and the pinned Envoy with the built filters on kernel-assigned ports,
and writes a state file once Envoy's admin endpoint reports ready."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
TOLLGATE = ROOT / "target/native/tollgate"
DEFAULT_CONFIG = ROOT / "examples/tollgate.yaml"


class GatewayFailed(RuntimeError):
    pass


@dataclass
class Gateway:
    process: subprocess.Popen
    run_dir: Path
    state: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.state["gateway_url"]

    @property
    def admin_url(self) -> str:
        return self.state["admin_url"]

    def backend_url(self, name: str) -> str:
        return self.state["backends"][name]

    def mock_requests(self, backend: str) -> list[dict]:
        return httpx.get(f"{self.backend_url(backend)}/mock/requests").json()

    def reset_mocks(self) -> None:
        for url in self.state["backends"].values():
            httpx.post(f"{url}/mock/reset").raise_for_status()

    def logs(self) -> str:
        return run_dir_logs(self.run_dir)

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it is still running after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_dir_logs(run_dir: Path) -> str:
    """The tail of every log in a run directory, for a failed test's report."""
    parts = []
    for name in sorted(os.listdir(run_dir)):
        if name.endswith(".log"):
            text = (run_dir / name).read_text(errors="replace")
            parts.append(f"----- {name} (last 4000 chars) -----\n{text[-4000:]}")
    return "\n".join(parts)


def start_gateway(run_dir: Path, config: Path = DEFAULT_CONFIG, filters: str | None = None,
                  timeout: float = 90.0) -> Gateway:
    """Starts a gateway and waits until it is ready; raises GatewayFailed with
    the logs if it exits or times out first."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state_file = run_dir / "state.json"
    command = [str(TOLLGATE), "run", "--config", str(config), "--ephemeral", "--quiet",
               "--run-dir", str(run_dir), "--state-file", str(state_file),
               "--wasm-dir", str(ROOT / "target/wasm32-wasip1/release"),
               "--mock-bin", str(ROOT / "target/native/mock-llm")]
    # TOLLGATE_E2E_FILTERS runs the suite against a subset of the filters.
    filters = filters if filters is not None else os.environ.get("TOLLGATE_E2E_FILTERS")
    if filters is not None:
        command += ["--filters", filters]
    output = open(run_dir / "tollgate.log", "w")
    process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    gateway = Gateway(process=process, run_dir=run_dir)
    deadline = time.monotonic() + timeout
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            gateway.stop()
            raise GatewayFailed(f"gateway did not start (exit {process.returncode})\n{gateway.logs()}")
        time.sleep(0.05)
    gateway.state = json.loads(state_file.read_text())
    return gateway


def prometheus_samples(text: str) -> dict[str, float]:
    """Parses Prometheus text exposition into {'name{labels}': value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        samples[key] = float(value)
    return samples


def variant_config(directory: Path, change) -> Path:
    """Writes a copy of the example configuration changed by `change(dict)`;
    JSON is valid YAML, so `tollgate` reads it as it is."""
    import yaml

    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    change(config)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tollgate.json"
    path.write_text(json.dumps(config, indent=2))
    return path
