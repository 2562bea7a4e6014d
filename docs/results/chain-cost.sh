#!/usr/bin/env bash
# The tracer's CPU per request on /chain (three calls: two to a second
# traced service, one to an untraced server) beside /light, in one run:
# both services traced by one tracer exporting OTLP/gRPC to the harness
# sink; the apps on core 0, everything else on core 1. Run as root from the
# repository root after `cargo xtask build`:
#   bash docs/results/chain-cost.sh [rate] [seconds]
set -euo pipefail
rate=${1:-200}
seconds=${2:-20}
venv=$PWD/.venv
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

taskset -c 1 target/release/harness sink --grpc 127.0.0.1:14317 --http 127.0.0.1:14318 >"$work/sink.log" 2>&1 &
pids+=($!)
# The untraced server: answers 200 to anything, not selected by the tracer.
taskset -c 1 "$venv/bin/python" -c '
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 18103), H).serve_forever()' &
pids+=($!)
for port in 18101 18102; do
  CHAIN_DOWNSTREAM=http://127.0.0.1:18102 CHAIN_UNTRACED=http://127.0.0.1:18103 \
    taskset -c 0 "$venv/bin/gunicorn" --chdir harness/app -b 127.0.0.1:$port -w 1 \
    -k gthread --threads 4 app:app >"$work/gunicorn-$port.log" 2>&1 &
  pids+=($!)
done
for url in 18101/light 18102/light 18103/; do
  until curl -sf -o /dev/null "http://127.0.0.1:$url"; do sleep 0.2; done
done
taskset -c 1 target/release/tracer --port 18101 --port 18102 \
  --otlp-endpoint http://127.0.0.1:14317 >"$work/tracer.log" 2>&1 &
tracer=$!
pids+=($tracer)
until grep -q "tracing .* processes" "$work/tracer.log"; do sleep 0.2; done
sysctl -qw kernel.bpf_stats_enabled=1
cpu_ticks() { awk '{print $14 + $15}' "/proc/$tracer/stat"; }
# Run time of the programs this tracer loaded (others may run on the host),
# found by the program ids of its file descriptors.
bpf_ns() {
  ids=$(grep -h '^prog_id:' /proc/$tracer/fdinfo/* 2>/dev/null | awk '{print $2}' | sort -u | tr '\n' ' ')
  bpftool prog show -j | python3 -c 'import json,sys
ids = set(map(int, sys.argv[1].split()))
print(sum(p.get("run_time_ns", 0) for p in json.load(sys.stdin) if p["id"] in ids))' "$ids"
}
hz=$(getconf CLK_TCK)
echo "| route | rate (req/s) | responses | tracer user+sys µs/req | BPF µs/req (all programs) |"
echo "|---|---|---|---|---|"
for route in /light /chain; do
  before=$(cpu_ticks); bpf_before=$(bpf_ns)
  out=$(taskset -c 1 target/release/harness load -R "$rate" -d "$seconds" "127.0.0.1:18101$route")
  after=$(cpu_ticks); bpf_after=$(bpf_ns)
  responses=$(echo "$out" | sed -nE 's/.*ok_2xx: ([0-9]+).*/\1/p')
  python3 -c "print(f'| $route | $rate | $responses | {($after-$before)/$hz*1e6/$responses:.1f} | {($bpf_after-$bpf_before)/1e3/$responses:.1f} |')"
done
sysctl -qw kernel.bpf_stats_enabled=0
