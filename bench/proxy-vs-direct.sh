#!/usr/bin/env bash
# Throughput and memory of two weir-proxies (outbound → inbound) against the same upstream
# called directly, in one run so the ratio is meaningful on a noisy machine.
#
#   bench/proxy-vs-direct.sh [SECONDS]     (default 10; needs wrk: apt-get install wrk)
#
# The full comparison against nginx, HAProxy and Envoy is `bench/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/configs.sh
source bench/lib/configs.sh
secs=${1:-10}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }

cargo build --quiet --release -p weir-proxy -p weir-tests --bin weir-proxy --bin weir-testapp
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
wait_ready() { for _ in $(seq 200); do curl -fs "http://127.0.0.1:$1/ready" >/dev/null && return; sleep 0.05; done; echo "proxy on admin :$1 not ready" >&2; exit 1; }
rps() { wrk -t1 -c16 -d"${secs}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
lat() { wrk -t1 -c16 -d"${secs}s" --latency "$@" | awk '/ 50%/ {p50=$2} / 99%/ {p99=$2} END {print p50, p99}'; }

start_pair() { # $1 = peer protocol, $2 = port offset
    local o=$2
    weir_mesh "$work/mesh$o.yaml" $((24143 + o)) 0 default
    taskset -c 1 "$bin/weir-proxy" --service echo --inbound-addr 127.0.0.1:$((24143 + o)) \
        --outbound-addr 127.0.0.1:$((24150 + o)) --admin-addr 127.0.0.1:$((24191 + o)) \
        --app-addr 127.0.0.1:28080 --config "$work/mesh$o.yaml" 2>>"$work/log" &
    pids+=($!); in_pid=$!
    taskset -c 1 "$bin/weir-proxy" --service client --outbound-addr 127.0.0.1:$((24140 + o)) \
        --inbound-addr 127.0.0.1:$((24144 + o)) --admin-addr 127.0.0.1:$((24192 + o)) \
        --peer-protocol "$1" --config "$work/mesh$o.yaml" 2>>"$work/log" &
    pids+=($!); out_pid=$!
    wait_ready $((24191 + o)); wait_ready $((24192 + o))
}

taskset -c 0 "$bin/weir-testapp" http --listen 127.0.0.1:28080 >/dev/null &
pids+=($!)
for _ in $(seq 200); do curl -fs http://127.0.0.1:28080/echo >/dev/null && break; sleep 0.05; done

start_pair h2 0;    h2_in=$in_pid;  h2_out=$out_pid
start_pair http1 20; h1_in=$in_pid; h1_out=$out_pid
idle_in=$(rss_kb "$h2_in"); idle_out=$(rss_kb "$h2_out")

# Proxies share core 1, wrk and the app core 0: the proxies' cost shows up as lost throughput.
direct=$(taskset -c 0 bash -c "$(declare -f rps); secs=$secs; rps http://127.0.0.1:28080/echo")
via_h2=$(taskset -c 0 bash -c "$(declare -f rps); secs=$secs; rps -H 'Host: echo' http://127.0.0.1:24140/echo")
via_h1=$(taskset -c 0 bash -c "$(declare -f rps); secs=$secs; rps -H 'Host: echo' http://127.0.0.1:24160/echo")
lat_direct=$(lat http://127.0.0.1:28080/echo)
lat_h2=$(lat -H 'Host: echo' http://127.0.0.1:24140/echo)
peak_in=$(rss_kb "$h2_in"); peak_out=$(rss_kb "$h2_out")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo "| path | wrk -c16 rps | vs direct |"
echo "|---|---|---|"
echo "| direct | $direct | 1.00 |"
echo "| two proxies, HTTP/2 between | $via_h2 | $(ratio "$via_h2" "$direct") |"
echo "| two proxies, HTTP/1.1 between | $via_h1 | $(ratio "$via_h1" "$direct") |"
echo
echo "latency p50/p99 (wrk -c16): direct $lat_direct; two proxies (h2) $lat_h2"
echo "RSS KiB: outbound idle $idle_out, after load $peak_out; inbound idle $idle_in, after load $peak_in"
echo "binary: $(stat -c %s "$bin/weir-proxy") bytes ($bin/weir-proxy)"
