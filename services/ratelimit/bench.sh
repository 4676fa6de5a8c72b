#!/usr/bin/env bash
# ShouldRateLimit latency, sequential, over loopback: the service with the in-memory
# backend, then with Redis (a private redis-server), each measured by the rls_bench
# example (20k calls after 2k warm-up, two descriptors per call as Envoy sends them).
# Usage: services/ratelimit/bench.sh [calls]   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
CALLS=${1:-20000}
cargo build -q --profile native -p ratelimit --bin ratelimit --example rls_bench
BIN=target/native/ratelimit
BENCH=target/native/examples/rls_bench
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

wait_file() { for _ in $(seq 200); do [[ -s $1 ]] && return 0; sleep 0.05; done; echo "no $1" >&2; exit 1; }

run_case() { # label, extra service args...
  local label=$1; shift
  rm -f "$WORK/port"
  $BIN --config examples/ratelimit/ai-gateway.yaml --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --port-file "$WORK/port" "$@" 2>>"$WORK/service.log" &
  local pid=$!
  PIDS+=("$pid")
  wait_file "$WORK/port"
  $BENCH --target "http://127.0.0.1:$(cat "$WORK/port")" --calls "$CALLS" --label "$label"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_case memory
if command -v redis-server >/dev/null; then
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
  PIDS+=("$!")
  for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  run_case redis --redis-url "redis://127.0.0.1:$PORT/"
else
  echo "redis: skipped (redis-server not installed)"
fi
