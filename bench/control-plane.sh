#!/usr/bin/env bash
# Control-plane benchmark: N simulated proxies (discovery streams that ACK) on one weir-control,
# time from `apply` to 50/99/100% ACKed, and the control plane's RSS and CPU.
# Goal (issue): 10,000 proxies ACKed in <= 1 s with <= 300 MB.
#
#   bench/control-plane.sh                 # 1,000 then 10,000 streams, 3 rounds each
#   STREAMS="1000" ROUNDS=5 bench/control-plane.sh
#   CONNECTIONS=100 bench/control-plane.sh # streams share 100 TCP connections
#   WEIR_CONTROL_BIN=/tmp/x/weir-control bench/control-plane.sh  # a prebuilt control plane
#
# Each stream count gets a fresh control plane (fresh data dir), so idle RSS and Status rows
# are not carried over. The bench client runs on the same machine and shares its cores.
set -euo pipefail

cd "$(dirname "$0")/.."
STREAMS=${STREAMS:-"1000 10000"}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-}
NOFILE=${NOFILE:-65536}

# WEIR_CONTROL_BIN=/path/to/weir-control benchmarks a prebuilt control plane (another commit,
# or while the workspace's control plane does not build); only the bench client is built then.
if [[ -n "${WEIR_CONTROL_BIN:-}" ]]; then
    cargo build --release -p weir-tests --bin weir-cp-bench >&2
else
    cargo build --release -p weir-control -p weir-tests --bin weir-control --bin weir-cp-bench >&2
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
CONTROL=${WEIR_CONTROL_BIN:-"$TARGET_DIR/release/weir-control"}
BENCH="$TARGET_DIR/release/weir-cp-bench"

# Both processes need one descriptor per stream plus headroom.
ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "ulimit -n: $(ulimit -n); cores: $(nproc); $(uname -sr)" >&2

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cpbench.XXXXXX")
CP_PID=""
BENCH_PID=""
cleanup() {
    [[ -n "$BENCH_PID" ]] && kill "$BENCH_PID" 2>/dev/null || true
    if [[ -n "$CP_PID" ]]; then
        kill "$CP_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$CP_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$CP_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

for n in $STREAMS; do
    if (( n + 1000 > $(ulimit -n) )); then
        echo "warning: ulimit -n $(ulimit -n) is tight for $n streams (one descriptor each)" >&2
    fi
    data="$WORK/data-$n"
    log="$WORK/control-$n.log"
    # Port 0: the kernel picks a free port; the log line tells which.
    WEIR_LOG=info "$CONTROL" serve --listen 127.0.0.1:0 --data-dir "$data" 2>"$log" &
    CP_PID=$!
    addr=""
    for _ in $(seq 200); do
        addr=$(sed -n 's/.*weir-control listening on \([0-9.:]*\).*/\1/p' "$log" | head -1)
        [[ -n "$addr" && -s "$data/admin.token" ]] && break
        kill -0 "$CP_PID" 2>/dev/null || { echo "weir-control exited:" >&2; cat "$log" >&2; exit 1; }
        sleep 0.05
    done
    [[ -n "$addr" ]] || { echo "weir-control did not start within 10 s:" >&2; cat "$log" >&2; exit 1; }
    echo "== $n streams against weir-control pid $CP_PID on $addr" >&2
    sleep 0.5 # idle baseline after startup
    args=(--server "https://$addr" --token-file "$data/admin.token" --trust-bundle "$data/trust-bundle.pem" --streams "$n"
          --rounds "$ROUNDS" --cp-pid "$CP_PID")
    [[ -n "$CONNECTIONS" ]] && args+=(--connections "$CONNECTIONS")
    # Bounded: connect timeout 180 s + 30 s per round + Status checks.
    timeout --kill-after=10 $((240 + ROUNDS * 45)) "$BENCH" "${args[@]}" \
        > >(tee -a "$RESULTS" >&2) &
    BENCH_PID=$!
    wait "$BENCH_PID" || echo "bench for $n streams failed (exit $?)" >&2
    BENCH_PID=""
    kill "$CP_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$CP_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$CP_PID" 2>/dev/null || true
    wait "$CP_PID" 2>/dev/null || true
    CP_PID=""
    sleep 1 # let the sockets of this run go (TIME_WAIT uses no descriptors, but be gentle)
done

# JSON lines → markdown. Connect figures go on each stream count's first row.
echo
echo "Simulated proxies on the same $(nproc)-core machine as weir-control (client CPU shown); load average at the end: $(cut -d" " -f1-3 /proc/loadavg)."
echo
jq -rs '
  def mb: if . == null then "–" else ((. / 1024 * 10 | round) / 10 | tostring) + " MB" end;
  def t: if . == null then "–" elif . < 10 then (((. * 10 | round) / 10 | tostring) + " ms") else ((. | round | tostring) + " ms") end;
  def s: if . == null then "–" else (. | tostring) + " s" end;
  (map(select(.event == "connected")) | INDEX(.streams | tostring)) as $c
  | "| streams | round | connect + first snapshot | apply RPC | apply→50% | apply→99% | apply→100% | Status ≥99% | CP RSS idle | CP RSS connected | CP RSS peak (apply) | CP VmHWM | CP CPU (apply) | client CPU (apply) |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    (map(select(.event == "round"))[]
     | . as $r | $c[$r.streams | tostring] as $k
     | "| \($r.streams) | \($r.round) | "
       + (if $r.round == 1 then "\($k.initial_snapshot_all_ms | t) (\($k.initial_snapshots)/\($k.streams))" else "" end)
       + " | \($r.apply_rpc_ms | t) | \($r.p50_ms | t) | \($r.p99_ms | t) | "
       + (if $r.timed_out then "timeout (\($r.reached)/\($r.streams))" else ($r.p100_ms | t) end)
       + " | \($r.status_99_ms | t) | "
       + (if $r.round == 1 then "\($k.cp_rss_idle_kb | mb) | \($k.cp_rss_connected_kb | mb)" else " | " end)
       + " | \($r.cp_rss_peak_kb | mb) | \($r.cp_hwm_kb | mb) | \($r.cp_cpu_apply_s | s) | \($r.client_cpu_apply_s | s) |")
' "$RESULTS"
