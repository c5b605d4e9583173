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
#
# SCENARIO=mesh: PROXIES proxies over SERVICES services on Discovery.Delta (weir-mesh-bench),
# each calling CALLS others, plus ROLL proxies of a service `big` that CALLERS_OF_BIG proxies
# call: one policy change, one new endpoint and one MeshConfig change per round, then a rolling
# restart of `big`. The last line printed is one JSON summary.
#
#   SCENARIO=mesh PROXIES=10000 SERVICES=1000 CALLS=5 ROUNDS=3 bench/control-plane.sh
set -euo pipefail

cd "$(dirname "$0")/.."
STREAMS=${STREAMS:-"1000 10000"}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-}
NOFILE=${NOFILE:-65536}
SCENARIO=${SCENARIO:-}
case "$SCENARIO" in
    "") BENCH_BIN=weir-cp-bench ;;
    mesh) BENCH_BIN=weir-mesh-bench ;;
    *) echo "unknown SCENARIO=$SCENARIO (unset or mesh)" >&2; exit 2 ;;
esac

# WEIR_CONTROL_BIN=/path/to/weir-control benchmarks a prebuilt control plane (another commit,
# or while the workspace's control plane does not build); only the bench client is built then.
if [[ -n "${WEIR_CONTROL_BIN:-}" ]]; then
    cargo build --release -p weir-tests --bin "$BENCH_BIN" >&2
else
    cargo build --release -p weir-control -p weir-tests --bin weir-control --bin "$BENCH_BIN" >&2
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
CONTROL=${WEIR_CONTROL_BIN:-"$TARGET_DIR/release/weir-control"}
BENCH="$TARGET_DIR/release/$BENCH_BIN"

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

# Starts weir-control on a fresh data dir; sets CP_PID and addr.
start_control() {
    local data=$1 log=$2
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
}

stop_control() {
    kill "$CP_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$CP_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$CP_PID" 2>/dev/null || true
    wait "$CP_PID" 2>/dev/null || true
    CP_PID=""
}

if [[ "$SCENARIO" == mesh ]]; then
    PROXIES=${PROXIES:-10000}
    SERVICES=${SERVICES:-1000}
    CALLS=${CALLS:-5}
    ROLL=${ROLL:-1000}
    CALLERS_OF_BIG=${CALLERS_OF_BIG:-50}
    ROLL_BATCH=${ROLL_BATCH:-10}
    PHASE_TIMEOUT=${PHASE_TIMEOUT:-30}
    ROLL_TIMEOUT=${ROLL_TIMEOUT:-300}
    CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-300}
    if (( PROXIES + ROLL + 1000 > $(ulimit -n) )); then
        echo "warning: ulimit -n $(ulimit -n) is tight for $((PROXIES + ROLL)) proxies" >&2
    fi
    start_control "$WORK/data-mesh" "$WORK/control-mesh.log"
    echo "== mesh: $PROXIES proxies, $SERVICES services, $CALLS calls each, roll $ROLL; weir-control pid $CP_PID on $addr" >&2
    sleep 0.5 # idle baseline after startup
    # Bounded: connect, setup, 3 changes a round (phase timeout + settling each), the restart
    # with its lease grace (10 s, the control plane's default) and settling.
    rc=0
    timeout --kill-after=10 $((CONNECT_TIMEOUT + 120 + ROUNDS * 3 * (PHASE_TIMEOUT + 10) + ROLL_TIMEOUT + 90)) \
        "$BENCH" --server "https://$addr" --token-file "$WORK/data-mesh/admin.token" \
        --trust-bundle "$WORK/data-mesh/trust-bundle.pem" --cp-pid "$CP_PID" \
        --proxies "$PROXIES" --services "$SERVICES" --calls "$CALLS" --rounds "$ROUNDS" \
        --roll "$ROLL" --callers-of-big "$CALLERS_OF_BIG" --roll-batch "$ROLL_BATCH" \
        --phase-timeout "$PHASE_TIMEOUT" --roll-timeout "$ROLL_TIMEOUT" \
        --connect-timeout "$CONNECT_TIMEOUT" > >(tee -a "$RESULTS" >&2) &
    BENCH_PID=$!
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""
    if (( rc != 0 )); then
        echo "weir-control log (tail):" >&2
        tail -20 "$WORK/control-mesh.log" >&2
    fi
    stop_control
    sleep 0.2 # the tee behind the process substitution writes its last line
    last=$(tail -n 1 "$RESULTS")
    if jq -e 'select(.event == "summary")' <<<"$last" >/dev/null 2>&1; then
        jq -c . <<<"$last"
    else
        jq -cn --argjson rc "$rc" '{event: "summary", scenario: "mesh", error: "weir-mesh-bench exited before its summary", exit: $rc}'
    fi
    exit 0
fi

for n in $STREAMS; do
    if (( n + 1000 > $(ulimit -n) )); then
        echo "warning: ulimit -n $(ulimit -n) is tight for $n streams (one descriptor each)" >&2
    fi
    data="$WORK/data-$n"
    log="$WORK/control-$n.log"
    start_control "$data" "$log"
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
    stop_control
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
