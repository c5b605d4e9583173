#!/usr/bin/env bash
# Instructions and allocations per request in each weir-proxy of a two-hop chain, counted by
# valgrind's callgrind: exact counts, unlike CPU time on a shared machine, so small changes
# show. Method and figures: BENCHMARKS.md ("Profile").
#
#   bench/profile.sh [--bin PATH] [--side out|in|both] [--requests N] [--warmup N] [--mtls]
#                    [--keep DIR]
#
#   --bin PATH     weir-proxy to profile (default: build target/release/weir-proxy with debug
#                  symbols, so the call graph has names)
#   --side S       which proxy runs under callgrind: out (the caller's), in (the callee's) or
#                  both, one after the other (default both)
#   --requests N   requests counted (default 20000); --warmup N before counting (default
#                  20000; HPACK tables only reach steady state after about a minute of traffic,
#                  use 150000 for that)
#   --mtls         strict mTLS between the proxies (bench CA certificates)
#   --keep DIR     keep the callgrind files there (read them with callgrind_annotate)
#
# Prints, per side: instructions per request, malloc/calloc/realloc calls per request, and the
# 15 functions with the highest self cost. Needs valgrind, nginx and oha (bench/run.sh
# installs the last two); everything started is stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin"
# shellcheck source-path=SCRIPTDIR source=lib/configs.sh
source "$here/lib/configs.sh"

bin="" sides=(out in) requests=20000 warmup=20000 mtls=0 keep=""
while (($#)); do
    case $1 in
        --bin) bin=${2:?}; shift ;;
        --side) case ${2:?} in both) sides=(out in) ;; out | in) sides=("$2") ;; *) echo "--side out|in|both" >&2; exit 2 ;; esac; shift ;;
        --requests) requests=${2:?}; shift ;;
        --warmup) warmup=${2:?}; shift ;;
        --mtls) mtls=1 ;;
        --keep) keep=${2:?}; shift ;;
        -h | --help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *) echo "bench/profile.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
die() { printf 'bench/profile.sh: %s\n' "$*" >&2; exit 1; }
for t in valgrind callgrind_control nginx oha curl python3 taskset; do
    command -v "$t" >/dev/null || die "'$t' is missing (apt-get install -y valgrind nginx-light; cargo install oha --locked)"
done
if [[ -z $bin ]]; then
    (cd "$root" && CARGO_PROFILE_RELEASE_DEBUG=true cargo build --quiet --release -p weir-proxy) ||
        die "release build failed"
    bin=$root/target/release/weir-proxy
fi

work=$(mktemp -d /tmp/weir-profile.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

read -r up p_in p_in_out p_in_admin p_out p_out_in p_out_admin < <(python3 -c '
import socket
s = [socket.socket() for _ in range(7)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')

nginx_upstream "$work/upstream.conf" "$up"
taskset -c 0 nginx -p "$work" -e stderr -c "$work/upstream.conf" -g 'daemon off;' 2>"$work/nginx.log" &
pids+=($!)
weir_mesh "$work/mesh.yaml" "$p_in" "$mtls"
id_in=() id_out=()
if ((mtls)); then
    mkdir "$work/certs" && gen_certs "$work/certs"
    id_in=(--cert "$work/certs/server.crt" --key "$work/certs/server.key" --trust-bundle "$work/certs/ca.crt")
    id_out=(--cert "$work/certs/client.crt" --key "$work/certs/client.key" --trust-bundle "$work/certs/ca.crt")
fi

wait_ready() { # URL
    local _
    for _ in $(seq 600); do curl -fs -o /dev/null --max-time 1 -H 'Host: echo' "$1" && return 0; sleep 0.1; done
    die "$1 did not answer within 60 s; logs in $work"
}

# load N: N requests from 4 keep-alive connections through the chain.
load() {
    taskset -c 0 oha -n "$1" -c 4 --no-tui --output-format json -H 'Host: echo' \
        "http://127.0.0.1:$p_out/" | python3 -c '
import json, sys
d = json.load(sys.stdin)
ok = d["statusCodeDistribution"].get("200", 0)
if ok != int(sys.argv[1]):
    sys.exit("only %d of %s requests answered 200: %s %s" % (ok, sys.argv[1], d["statusCodeDistribution"], d.get("errorDistribution")))
' "$1"
}

for side in "${sides[@]}"; do
    vg_in=() vg_out=()
    vg=(valgrind --tool=callgrind --dump-instr=no --compress-strings=no --collect-systime=no
        "--callgrind-out-file=$work/cg-$side.%p" "--log-file=$work/valgrind-$side.log")
    if [[ $side == in ]]; then vg_in=("${vg[@]}"); else vg_out=("${vg[@]}"); fi
    WEIR_LOG=warn taskset -c 1 "${vg_in[@]}" "$bin" --service echo --namespace bench \
        --service-account server --inbound-addr "127.0.0.1:$p_in" \
        --outbound-addr "127.0.0.1:$p_in_out" --admin-addr "127.0.0.1:$p_in_admin" \
        --app-addr "127.0.0.1:$up" --drain-timeout 1s --config "$work/mesh.yaml" "${id_in[@]}" \
        2>"$work/in.log" &
    in_pid=$!
    WEIR_LOG=warn taskset -c 1 "${vg_out[@]}" "$bin" --service client --namespace bench \
        --service-account client --inbound-addr "127.0.0.1:$p_out_in" \
        --outbound-addr "127.0.0.1:$p_out" --admin-addr "127.0.0.1:$p_out_admin" \
        --app-addr 127.0.0.1:1 --drain-timeout 1s --config "$work/mesh.yaml" "${id_out[@]}" \
        2>"$work/out.log" &
    out_pid=$!
    pids+=("$in_pid" "$out_pid")
    wait_ready "http://127.0.0.1:$p_in_admin/ready"
    wait_ready "http://127.0.0.1:$p_out_admin/ready"
    wait_ready "http://127.0.0.1:$p_out/"
    target=$out_pid
    [[ $side == in ]] && target=$in_pid
    load "$warmup"
    # Zero the counters, count exactly N requests, dump: start-up and idle costs stay out.
    callgrind_control -z "$target" >/dev/null 2>&1
    load "$requests"
    callgrind_control -d counted "$target" >/dev/null 2>&1
    kill -TERM "$in_pid" "$out_pid"
    wait "$in_pid" "$out_pid" 2>/dev/null || true
    f=$(ls "$work"/cg-"$side".*.1 2>/dev/null | head -n 1)
    [[ -n $f ]] || die "callgrind wrote no dump for the $side side; see $work/valgrind-$side.log"
    python3 "$here/lib/callgrind.py" "$f" "$requests" \
        "$([[ $side == in ]] && echo "inbound (callee side)" || echo "outbound (caller side)")"
    if [[ -n $keep ]]; then mkdir -p "$keep" && cp "$f" "$keep/callgrind-$side.out"; fi
done
