#!/usr/bin/env bash
# Local demo: an app behind two Weir proxies, on loopback, no root needed.
#
#   client ──► outbound proxy (:14140) ══ HTTP/2 ══► inbound proxy (:14143) ──► app (:18080)
#
# Prints a few requests and what each hop counted.
set -euo pipefail
cd "$(dirname "$0")"

cargo build --quiet -p weir-proxy -p weir-tests --bin weir-proxy --bin weir-testapp
bin=target/debug
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cat >"$work/mesh.yaml" <<'YAML'
apiVersion: weir/v1
kind: MeshConfig
metadata: { name: default }
spec: { mtls: permissive }      # plaintext between proxies until identities land
---
apiVersion: weir/v1
kind: Endpoints
metadata: { name: echo, namespace: default }
spec: { addresses: ["127.0.0.1:14143"] }
YAML

"$bin/weir-testapp" http --listen 127.0.0.1:18080 >/dev/null &
pids+=($!)
# The callee's sidecar: receives from peers on :14143, delivers to the app.
"$bin/weir-proxy" --service echo --inbound-addr 127.0.0.1:14143 --outbound-addr 127.0.0.1:14150 \
    --admin-addr 127.0.0.1:14191 --app-addr 127.0.0.1:18080 --config "$work/mesh.yaml" 2>"$work/inbound.log" &
pids+=($!)
# The caller's sidecar: the client sends to :14140.
"$bin/weir-proxy" --service client --outbound-addr 127.0.0.1:14140 --inbound-addr 127.0.0.1:14144 \
    --admin-addr 127.0.0.1:14192 --config "$work/mesh.yaml" 2>"$work/outbound.log" &
pids+=($!)

for port in 14191 14192; do
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
done

echo "== GET http://echo/echo through the outbound proxy (Host names the service)"
curl -s -H 'Host: echo' http://127.0.0.1:14140/echo; echo
echo "== the same as an HTTP_PROXY client would send it"
curl -s -x http://127.0.0.1:14140 http://echo.default.svc.cluster.local/echo; echo
echo "== POST 1 MiB"
head -c 1048576 /dev/zero | curl -s -H 'Host: echo' --data-binary @- http://127.0.0.1:14140/upload; echo
echo "== a name that is not in the mesh is passed through untouched"
curl -s -H 'Host: 127.0.0.1:18080' http://127.0.0.1:14140/echo; echo

echo
echo "== what each hop counted"
echo "-- caller's proxy (outbound):"
curl -s http://127.0.0.1:14192/metrics | grep -E '^weir_(requests_total|responses_total\{.*2xx)' | grep outbound
echo "-- callee's proxy (inbound):"
curl -s http://127.0.0.1:14191/metrics | grep -E '^weir_(requests_total|responses_total\{.*2xx|connections_total)' | grep inbound
