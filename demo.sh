#!/usr/bin/env bash
# The API waterfall, and what Weir does to it. No root, loopback only.
#
#   load ─► edge ─► gateway ─► checkout ─┬─► auth
#                                        ├─► catalog ─► inventory      } in parallel
#                                        ├─► payment (2 replicas) ─► bank
#                                        └─► shipping
#
# Every service is a real process (weir-testapp shop) behind its own weir-proxy; every hop
# between sidecars is mTLS (strict) with an identity from weir-control. Policy changes go
# through weirctl. Spans go to Jaeger when one is reachable (--jaeger URL, WEIR_JAEGER_URL,
# docker, or a `jaeger` binary), and always to one OTLP JSON file per proxy.
#
#   ./demo.sh           run the story, clean up, exit 0
#   ./demo.sh --keep    leave the mesh running and print how to poke it
set -euo pipefail
cd "$(dirname "$0")"

keep=false
jaeger_url=${WEIR_JAEGER_URL:-}
while [ $# -gt 0 ]; do
    case $1 in
        --keep) keep=true ;;
        --jaeger) jaeger_url=${2:?--jaeger needs a URL, e.g. http://127.0.0.1:16686}; shift ;;
        --jaeger=*) jaeger_url=${1#--jaeger=} ;;
        -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

# WEIR_DEMO_BIN_DIR: binaries built elsewhere (the test of this demo passes its own).
bin=${WEIR_DEMO_BIN_DIR:-}
if [ -z "$bin" ]; then
    echo "building (cargo build: weir-proxy, weir-control, weirctl, weir-testapp) ..."
    cargo build --quiet -p weir-proxy -p weir-control -p weirctl -p weir-tests \
        --bin weir-proxy --bin weir-control --bin weirctl --bin weir-testapp
    bin=$PWD/target/debug
fi
started=$(date +%s)

work=$(mktemp -d "${TMPDIR:-/tmp}/weir-demo.XXXXXX")
pids=()
jaeger_container=
cleanup() {
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
    wait 2>/dev/null
    [ -n "$jaeger_container" ] && docker rm -f "$jaeger_container" >/dev/null 2>&1
    # WEIR_DEMO_SAVE_TRACES=DIR: keep the span files (the demo's test reads them).
    [ -n "${WEIR_DEMO_SAVE_TRACES:-}" ] && cp -r "$work/traces/." "$WEIR_DEMO_SAVE_TRACES/"
    rm -rf "$work"
}
$keep || trap cleanup EXIT
fail() { echo "demo.sh: $*" >&2; echo "logs: $work/logs (kept: run with --keep to look)" >&2; exit 1; }

# Ports: the control plane at BASE, service i at BASE+10i (app) and +1/+2/+3 (its proxy's
# inbound, outbound and admin listeners).
base=${WEIR_DEMO_PORT_BASE:-17100}
cp_addr=127.0.0.1:$base
mkdir -p "$work/logs" "$work/traces" "$work/tokens" "$work/policy"

# === Jaeger, when there is one ===
otlp=
if [ -n "$jaeger_url" ]; then
    host=${jaeger_url#*://}; host=${host%%[:/]*}
    otlp=${OTEL_EXPORTER_OTLP_ENDPOINT:-http://$host:4317}
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    jaeger_container=weir-demo-jaeger-$$
    docker run -d --rm --name "$jaeger_container" -p 127.0.0.1:4317:4317 \
        -p 127.0.0.1:16686:16686 jaegertracing/jaeger:2.11.0 >/dev/null \
        && jaeger_url=http://127.0.0.1:16686 otlp=http://127.0.0.1:4317 \
        || jaeger_container=
elif command -v jaeger >/dev/null 2>&1; then
    jaeger >"$work/logs/jaeger.log" 2>&1 &
    pids+=($!)
    jaeger_url=http://127.0.0.1:16686 otlp=http://127.0.0.1:4317
fi
if [ -n "$jaeger_url" ]; then
    for _ in $(seq 150); do curl -fs "$jaeger_url/" >/dev/null && break; sleep 0.2; done
    curl -fs "$jaeger_url/" >/dev/null || { echo "(Jaeger at $jaeger_url does not answer: traces go to files only)"; jaeger_url= otlp=; }
fi

# === The control plane ===
"$bin/weir-control" serve --listen "$cp_addr" --data-dir "$work/cp" >"$work/logs/weir-control.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do [ -s "$work/cp/admin.token" ] && [ -s "$work/cp/trust-bundle.pem" ] && break; sleep 0.05; done
[ -s "$work/cp/admin.token" ] || fail "weir-control did not start: $(tail -5 "$work/logs/weir-control.log")"
ctl() { "$bin/weirctl" --server "https://$cp_addr" --trust-bundle "$work/cp/trust-bundle.pem" --token-file "$work/cp/admin.token" "$@"; }
for _ in $(seq 100); do ctl status >/dev/null 2>&1 && break; sleep 0.05; done

cat >"$work/policy/mesh.yaml" <<'YAML'
apiVersion: weir/v1
kind: MeshConfig
metadata: { name: default }
spec:
  mtls: strict                  # plaintext between sidecars is refused
  tracing: { sampling: 1.0 }    # a demo traces every request
YAML
cat >"$work/policy/bank.yaml" <<'YAML'
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: bank, namespace: shop }
spec:
  service: bank
  authorization: { mode: allowList, allow: ["spiffe://weir.local/ns/shop/sa/payment"] }
YAML
ctl apply -f "$work/policy" >/dev/null   # mesh.yaml and bank.yaml

# === The shop ===
# name, app index (ports), service account, downstream calls, own work (ms)
services=(
    "edge      1  edge      -                           0"
    "gateway   2  gateway   checkout                    1"
    "checkout  3  checkout  auth,catalog+payment,shipping 2"
    "auth      4  auth      -                           3"
    "catalog   5  catalog   inventory                   2"
    "inventory 6  inventory -                           4"
    "payment-a 7  payment   bank                        3"
    "payment-b 8  payment   bank                        3"
    "bank      9  bank      -                           5"
    "shipping 10  shipping  -                           3"
)
port() { echo $((base + 10 * $1 + $2)); }   # $2: 0 app, 1 inbound, 2 outbound, 3 admin
declare -A app_port admin_port
for line in "${services[@]}"; do
    read -r name i sa calls work_ms <<<"$line"
    app_port[$name]=$(port "$i" 0) admin_port[$name]=$(port "$i" 3)
    [ -s "$work/tokens/$sa" ] || ctl token create --namespace shop --service-account "$sa" >"$work/tokens/$sa" 2>/dev/null
    if [ "$name" != edge ]; then
        shop_calls=(); [ "$calls" != - ] && shop_calls=(--calls "$calls")
        "$bin/weir-testapp" shop --listen "127.0.0.1:$(port "$i" 0)" --name "$name" \
            --proxy "127.0.0.1:$(port "$i" 2)" --work-ms "$work_ms" "${shop_calls[@]}" \
            >"$work/logs/$name.app.log" 2>&1 &
        pids+=($!)
    fi
    env ${otlp:+OTEL_EXPORTER_OTLP_ENDPOINT=$otlp} "$bin/weir-proxy" \
        --service "${sa}" --namespace shop --service-account "$sa" \
        --app-addr "127.0.0.1:$(port "$i" 0)" --inbound-addr "127.0.0.1:$(port "$i" 1)" \
        --outbound-addr "127.0.0.1:$(port "$i" 2)" --admin-addr "127.0.0.1:$(port "$i" 3)" \
        --control-plane "https://$cp_addr" --trust-bundle "$work/cp/trust-bundle.pem" \
        --token-file "$work/tokens/$sa" --trace-file "$work/traces/$name.jsonl" \
        >"$work/logs/$name.proxy.log" 2>&1 &
    pids+=($!)
done
for line in "${services[@]}"; do
    read -r name _ <<<"$line"
    for _ in $(seq 200); do curl -fs "http://127.0.0.1:${admin_port[$name]}/ready" >/dev/null && break; sleep 0.05; done
    curl -fs "http://127.0.0.1:${admin_port[$name]}/ready" >/dev/null ||
        fail "the proxy of $name is not ready: $(tail -3 "$work/logs/$name.proxy.log")"
done
edge=127.0.0.1:$(port 1 2)

total=0 failed=0 slowest_ms=0 slowest_trace=
# load LABEL N CONCURRENCY [--by-service]: a bounded load loop into the edge, counted.
load() {
    local n=$1 c=$2; shift 2
    "$bin/weir-testapp" load --target "$edge" --host gateway --path /checkout \
        --requests "$n" --concurrency "$c" --env-file "$work/last.env" "$@"
    # shellcheck disable=SC1091
    . "$work/last.env"
    total=$((total + REQUESTS)) failed=$((failed + FAILED))
    if [ -n "$SLOWEST_TRACE" ] && awk "BEGIN{exit !($MAX_MS > $slowest_ms)}"; then
        slowest_ms=$MAX_MS slowest_trace=$SLOWEST_TRACE
    fi
}
chaos() { curl -fsS "http://127.0.0.1:${app_port[$1]}/_chaos?$2" >/dev/null; }
metric() { # metric SERVICE REGEX: the sum of the matching series on that proxy
    curl -fs "http://127.0.0.1:${admin_port[$1]}/metrics" | { grep -E "$2" || true; } | awk '{s += $NF} END {print s + 0}'
}
# Spans reach the files within a second or so; wait until the trace stops growing.
trace_spans() { ctl trace --file "$work/traces" "$1" -o json 2>/dev/null | grep -c '"span_id"' || true; }
settle() {
    local last=-1 now
    for _ in $(seq 40); do
        now=$(trace_spans "$1"); [ "$now" -gt 0 ] && [ "$now" = "$last" ] && return 0
        last=$now; sleep 0.25
    done
}
step() { echo; echo "━━ $1"; echo "   $2"; }
converged() { # wait until every proxy acknowledged the newest config (ACKED has no `*`)
    for _ in $(seq 100); do
        ctl status -o wide 2>/dev/null | awk 'NR > 2 && $3 ~ /\*$/ {behind = 1} END {exit behind}' && return 0
        sleep 0.05
    done
}

# Endpoints register as the proxies connect; wait until a call crosses the whole chain.
for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: gateway' "http://$edge/checkout")" = 200 ] && break
    sleep 0.05
done

step "1. Steady traffic" "8 services (10 sidecars) on mTLS; 300 requests into the edge, 8 at a time. Each one is a waterfall of 8 calls."
load 300 8 --by-service
echo "   weirctl status (every proxy has acknowledged the current config):"
ctl status | sed 's/^/   /'

step "2. One request, hop by hop" "weirctl trace reads the spans the sidecars wrote; ▶ marks the critical path (what set the latency)."
load 1 1 >/dev/null
one=$SLOWEST_TRACE
settle "$one"
ctl trace --file "$work/traces" "$one" | sed 's/^/   /'

step "3. payment fails 30 % of its requests" "Without retries, those failures reach the user:"
chaos payment-a fail=30; chaos payment-b fail=30
load 200 8
cat >"$work/policy/payment.yaml" <<'YAML'
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: payment, namespace: shop }
spec:
  service: payment
  retries:
    attempts: 3
    on: [5xx, connect-failure, reset]
    backoff: { base: 5ms, max: 50ms }
    budget: { percent: 50, minPerSecond: 10 }   # retries add at most 50 % load
YAML
echo "   weirctl apply -f payment.yaml (up to 3 retries on 5xx, within a budget):"
ctl apply -f "$work/policy/payment.yaml" | sed 's/^/   /'
converged
load 200 8
retried=$RETRIED_TRACE
if [ -n "$retried" ]; then
    settle "$retried"
    echo "   one retried request: each try is its own span (#1, #2, ...), the failed ones marked ERROR"
    ctl trace --file "$work/traces" "$retried" | grep -E 'payment|#[0-9]' | sed 's/^/   /' | head -12
fi

step "4. payment becomes slow (1 s per request)" "Nothing bounds the wait, so every user waits for it:"
chaos payment-a 'fail=0&delay_ms=1000'; chaos payment-b 'fail=0&delay_ms=1000'
load 16 8
cat >>"$work/policy/payment.yaml" <<'YAML'
  timeouts: { request: 300ms }                  # checkout gives payment 300 ms, retries included
YAML
echo "   weirctl apply: payment gets 300 ms. The deadline travels on (x-weir-timeout-ms), so payment"
echo "   does not call bank for a caller that has given up."
ctl apply -f "$work/policy/payment.yaml" | sed 's/^/   /'
converged
bank_before=$(metric bank '^weir_requests_total\{direction="inbound"')
load 40 8 --by-service
bank_after=$(metric bank '^weir_requests_total\{direction="inbound"')
echo "   bank was called $((bank_after - bank_before)) times for those 40 requests (the deadline had passed)"

step "5. One payment replica breaks; bank gets slow" "The breaker ejects the broken replica; the bulkhead sheds calls to bank beyond 4 at a time."
chaos payment-a delay_ms=0; chaos payment-b 'delay_ms=0&fail=100'
cat >>"$work/policy/payment.yaml" <<'YAML'
  circuitBreaker:
    consecutiveFailures: 3
    ejection: { base: 30s, max: 5m, maxPercent: 50 }
YAML
ctl apply -f "$work/policy/payment.yaml" | sed 's/^/   /'
converged
load 200 8
echo "   checkout's sidecar ejected payment-b $(metric checkout '^weir_breaker_ejections_total') time(s); the retries covered the tries before that"
chaos payment-b fail=0; chaos bank delay_ms=300
cat >>"$work/policy/bank.yaml" <<'YAML'
  bulkhead: { maxConcurrent: 4, maxPending: 2, pendingTimeout: 50ms }
YAML
ctl apply -f "$work/policy/bank.yaml" | sed 's/^/   /'
converged
echo "   bank now takes 300 ms; the excess fails fast instead of piling up, and the other branches of the waterfall stay healthy:"
load 48 12 --by-service

step "6. Roll back" "bank is fast again, the tight bulkhead is rolled back to bank's first revision, and traffic recovers."
chaos bank delay_ms=0
ctl history sp shop/bank | sed 's/^/   /'
first_rev=$(ctl history sp shop/bank | awk 'NR == 2 {print $1}')
ctl rollback sp shop/bank --to "$first_rev" | sed 's/^/   /'
converged
load 200 8

echo
echo "━━ The slowest request of the demo ($slowest_ms ms)"
settle "$slowest_trace"
ctl trace --file "$work/traces" "$slowest_trace" | sed 's/^/   /'
[ -n "$jaeger_url" ] && echo "   in Jaeger: $jaeger_url/trace/$slowest_trace"
echo "   (ran $(( $(date +%s) - started )) s after the build)"

if $keep; then
    {
        echo "#!/bin/sh"
        echo "kill ${pids[*]} 2>/dev/null"
        [ -n "$jaeger_container" ] && echo "docker rm -f $jaeger_container >/dev/null 2>&1"
        echo "rm -rf '$work'"
    } >"$work/stop.sh"
    chmod +x "$work/stop.sh"
    cat <<EOF

The mesh keeps running (--keep). Poke it:
  export WEIR_SERVER=https://$cp_addr WEIR_TRUST_BUNDLE=$work/cp/trust-bundle.pem
  alias weirctl='$bin/weirctl --token-file $work/cp/admin.token'
  curl -s -H 'Host: gateway' http://$edge/checkout            # one request through the edge
  $bin/weir-testapp load --target $edge --host gateway --requests 100 --by-service
  curl -s 'http://127.0.0.1:${app_port[payment-a]}/_chaos?fail=50'      # break payment-a (delay_ms=N slows it)
  weirctl status; weirctl get sp -n shop -o yaml; weirctl apply -f $work/policy/payment.yaml
  weirctl trace --file $work/traces --slowest     # or --list, --errors, TRACE_ID
  curl -s http://127.0.0.1:${admin_port[checkout]}/metrics     # checkout's sidecar
  logs: $work/logs
  stop: $work/stop.sh
EOF
fi
echo "demo: 8 services, $total requests, $failed failed, trace $slowest_trace"
