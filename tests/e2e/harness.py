"""Starts a real gateway for tests: `tollgate run --ephemeral` brings up the mock
backends and the pinned Envoy with the built filters on kernel-assigned ports,
and writes a state file once Envoy's admin endpoint reports ready."""

from __future__ import annotations

import copy
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


@dataclass
class EnvoyVariant:
    """Envoy on a bootstrap derived from a gateway's (its mocks keep serving)."""

    process: subprocess.Popen
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process)


def gateway_bootstrap(gateway: Gateway) -> dict:
    """The bootstrap `tollgate run` rendered for a running gateway."""
    return json.loads((gateway.run_dir / "envoy.json").read_text())


def start_envoy_variant(bootstrap: dict, work: Path, concurrency: int = 2) -> EnvoyVariant:
    """Starts Envoy on `bootstrap` with its listener and admin on ephemeral
    ports; returns once the listener is up."""
    work.mkdir(parents=True, exist_ok=True)
    bootstrap = copy.deepcopy(bootstrap)
    for listener in bootstrap["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["port_value"] = 0
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = 0
    config = work / "envoy.json"
    config.write_text(json.dumps(bootstrap))
    admin_file = work / "admin.address"
    envoy = os.environ.get("ENVOY_BIN", str(ROOT / ".venv/bin/envoy"))
    log = open(work / "envoy.log", "w")
    # The same flags as `tollgate run` gives Envoy (cli/src/run.rs).
    process = subprocess.Popen([envoy, "-c", str(config), "--admin-address-path", str(admin_file),
                                "--concurrency", str(concurrency), "--disable-hot-restart",
                                "--file-flush-interval-msec", "250", "--log-level", "warn"],
                               stdout=log, stderr=subprocess.STDOUT)
    variant = EnvoyVariant(process=process, url="")
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            variant.stop()
            raise GatewayFailed(f"Envoy did not start; see {work / 'envoy.log'}")
        if admin_file.exists() and admin_file.read_text().strip():
            try:
                listeners = httpx.get(f"http://{admin_file.read_text().strip()}/listeners?format=json", timeout=2).json()
                address = listeners["listener_statuses"][0]["local_address"]["socket_address"]
                if address.get("port_value"):
                    variant.url = f"http://{address['address']}:{address['port_value']}"
                    return variant
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
