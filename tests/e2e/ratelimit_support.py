"""Runs the rate-limit service with a real Envoy in front of the mock upstream:
Envoy's own `envoy.filters.http.ratelimit` calls `target/native/ratelimit` over gRPC
(domain ai-gateway; descriptors from the x-user-id and x-model-tier request headers).
Everything listens on kernel-assigned loopback ports and is stopped even on failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness import run_dir_logs

ROOT = Path(__file__).resolve().parents[2]
RATELIMIT = ROOT / "target/native/ratelimit"
MOCK = ROOT / "target/native/mock-llm"
ENVOY = Path(os.environ.get("ENVOY_BIN", ROOT / ".venv/bin/envoy"))
SEED_CONFIG = ROOT / "examples/ratelimit/ai-gateway.yaml"


def bootstrap(rls_port: int, upstream_port: int, domain: str = "ai-gateway",
              failure_mode_deny: bool = True) -> dict:
    """An Envoy bootstrap: one listener (port 0), the HTTP rate-limit filter calling the
    service as `ratelimit` (HTTP/2 cluster), and a route with two rate limits as Envoy
    builds descriptors: (user_id) and (user_id, model_tier). A request without
    x-model-tier produces only the first; one without x-user-id neither."""
    def cluster(name: str, port: int, http2: bool = False) -> dict:
        result = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
            },
        }
        if http2:
            result["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
        return result

    user = {"request_headers": {"header_name": "x-user-id", "descriptor_key": "user_id"}}
    tier = {"request_headers": {"header_name": "x-model-tier", "descriptor_key": "model_tier"}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "route_config": {
                            "name": "local",
                            "virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{
                                    "match": {"prefix": "/"},
                                    "route": {
                                        "cluster": "upstream",
                                        "rate_limits": [
                                            {"actions": [user]},
                                            {"actions": [user, tier]},
                                        ],
                                    },
                                }],
                            }],
                        },
                        "http_filters": [
                            {
                                "name": "envoy.filters.http.ratelimit",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                                    "domain": domain,
                                    "timeout": "2s",
                                    "failure_mode_deny": failure_mode_deny,
                                    "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                                    "rate_limit_service": {
                                        "transport_api_version": "V3",
                                        "grpc_service": {"envoy_grpc": {"cluster_name": "ratelimit"}},
                                    },
                                },
                            },
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                            },
                        ],
                    },
                }]}],
            }],
            "clusters": [cluster("upstream", upstream_port), cluster("ratelimit", rls_port, http2=True)],
        },
    }


def wait_for_file(path: Path, process: subprocess.Popen, what: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}) before writing {path.name}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not write {path.name} within {timeout}s")
        time.sleep(0.05)


@dataclass
class Stack:
    """The processes of one test, their ports, and their logs."""

    run_dir: Path
    processes: list = field(default_factory=list)
    ports: dict = field(default_factory=dict)

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.run_dir / f"{name}.log", "w")
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append((name, process))
        return process

    def start_ratelimit(self, name: str = "ratelimit", config: Path = SEED_CONFIG,
                        extra: list[str] | None = None) -> int:
        port_file = self.run_dir / f"{name}.port"
        http_file = self.run_dir / f"{name}.http-port"
        process = self.spawn(name, [str(RATELIMIT), "--config", str(config),
                                    "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                                    "--port-file", str(port_file), "--http-port-file", str(http_file),
                                    *(extra or [])])
        self.ports[name] = int(wait_for_file(port_file, process, name))
        self.ports[f"{name}-http"] = int(wait_for_file(http_file, process, name))
        return self.ports[name]

    def start_mock(self) -> int:
        port_file = self.run_dir / "mock.port"
        process = self.spawn("mock", [str(MOCK), "--name", "m", "--listen", "127.0.0.1:0",
                                      "--port-file", str(port_file)])
        self.ports["mock"] = int(wait_for_file(port_file, process, "mock-llm"))
        return self.ports["mock"]

    def write_bootstrap(self, config: dict) -> Path:
        path = self.run_dir / "envoy.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start_envoy(self, config: dict, timeout: float = 60.0) -> str:
        """Starts Envoy and returns the listener's base URL once it is live."""
        path = self.write_bootstrap(config)
        admin_file = self.run_dir / "envoy.admin"
        process = self.spawn("envoy", [str(ENVOY), "-c", str(path), "--admin-address-path", str(admin_file),
                                       "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn"])
        admin = "http://" + wait_for_file(admin_file, process, "envoy", timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                ready = httpx.get(f"{admin}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"envoy not ready\n{self.logs()}")
            time.sleep(0.05)
        listeners = httpx.get(f"{admin}/listeners?format=json", timeout=5).json()
        port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
        self.ports["envoy-admin"] = admin
        return f"http://127.0.0.1:{port}"

    def logs(self) -> str:
        return run_dir_logs(self.run_dir)

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def validate(config_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(ENVOY), "--mode", "validate", "--disable-hot-restart", "-l", "error",
                           "-c", str(config_path)], capture_output=True, text=True, timeout=120)
