# shellcheck shell=bash
# Config writers for bench/run.sh (sourced). Every proxy gets the same job: HTTP/1.1 from the
# client on hop 1, keep-alive towards the next hop and the upstream, no retries, one worker,
# no access log; with mTLS, hop 1 presents the client certificate and checks the server's,
# hop 2 requires a client certificate from the bench CA. TLS 1.3 only everywhere (as weir).

# gen_certs DIR: a CA and two ECDSA P-256 SPIFFE leaves (client, server) with openssl.
# The server leaf also names DNS:server.bench, because nginx and HAProxy check a host name
# (neither can match a URI SAN); weir and Envoy check the SPIFFE URI SAN.
gen_certs() {
    local d=$1 td=spiffe://weir.local/ns/bench/sa
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$d/ca.key" -sha256 -days 2 -subj "/CN=weir bench root" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$d/ca.crt" 2>/dev/null
    local who san
    for who in client server; do
        san="URI:$td/$who"
        [[ $who == server ]] && san="$san,DNS:server.bench"
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/$who.key" 2>/dev/null
        openssl req -new -key "$d/$who.key" -subj "/CN=$who.bench" -out "$d/$who.csr" 2>/dev/null
        printf '%s\n' "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth,clientAuth" \
            "subjectAltName=$san" >"$d/$who.ext"
        openssl x509 -req -in "$d/$who.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
            -set_serial "0x$(openssl rand -hex 8)" -days 2 -sha256 \
            -extfile "$d/$who.ext" -out "$d/$who.crt" 2>/dev/null
        cat "$d/$who.crt" "$d/$who.key" >"$d/$who.pem" # HAProxy wants both in one file
    done
    openssl verify -CAfile "$d/ca.crt" "$d/client.crt" "$d/server.crt" >/dev/null
}

# nginx_upstream FILE PORT: `return 200` with a 1 KiB body.
nginx_upstream() {
    local body pid="${1%.conf}.pid"
    body=$(head -c 1024 /dev/zero | tr '\0' 'x')
    cat >"$1" <<EOF
worker_processes 1;
pid $pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {
        listen 127.0.0.1:$2 backlog=4096;
        default_type text/plain;
        location / { return 200 "$body"; }
    }
}
EOF
}

# nginx_hop FILE LISTEN NEXT TLS_IN TLS_OUT CERTDIR
nginx_hop() {
    local f=$1 listen=$2 next=$3 tls_in=$4 tls_out=$5 c=$6
    local listen_tls="" server_tls="" scheme=http proxy_tls="" pid="${f%.conf}.pid"
    if [[ $tls_in == 1 ]]; then
        listen_tls=" ssl"
        server_tls="ssl_certificate $c/server.crt; ssl_certificate_key $c/server.key;
        ssl_protocols TLSv1.3; ssl_client_certificate $c/ca.crt; ssl_verify_client on;"
    fi
    if [[ $tls_out == 1 ]]; then
        scheme=https
        proxy_tls="proxy_ssl_certificate $c/client.crt; proxy_ssl_certificate_key $c/client.key;
            proxy_ssl_trusted_certificate $c/ca.crt; proxy_ssl_verify on;
            proxy_ssl_name server.bench; proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;"
    fi
    cat >"$f" <<EOF
worker_processes 1;
pid $pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream next {
        server 127.0.0.1:$next max_fails=0;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 75s;
    }
    server {
        listen 127.0.0.1:$listen$listen_tls backlog=4096;
        $server_tls
        location / {
            proxy_pass $scheme://next;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_next_upstream off;
            $proxy_tls
        }
    }
}
EOF
}

# haproxy_hop FILE LISTEN NEXT TLS_IN TLS_OUT CERTDIR
haproxy_hop() {
    local f=$1 listen=$2 next=$3 tls_in=$4 tls_out=$5 c=$6
    local bind_tls="" server_tls=""
    [[ $tls_in == 1 ]] && bind_tls=" ssl crt $c/server.pem ca-file $c/ca.crt verify required ssl-min-ver TLSv1.3"
    [[ $tls_out == 1 ]] && server_tls=" ssl crt $c/client.pem ca-file $c/ca.crt verify required verifyhost server.bench ssl-min-ver TLSv1.3"
    cat >"$f" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    retries 0
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend in
    bind 127.0.0.1:$listen$bind_tls
    default_backend next
backend next
    server s1 127.0.0.1:$next$server_tls
EOF
}

# envoy_hop FILE LISTEN NEXT TLS_IN TLS_OUT CERTDIR
envoy_hop() {
    local f=$1 listen=$2 next=$3 tls_in=$4 tls_out=$5 c=$6
    local down="" up=""
    if [[ $tls_in == 1 ]]; then
        down="
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: { tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }
            tls_certificates:
            - certificate_chain: { filename: $c/server.crt }
              private_key: { filename: $c/server.key }
            validation_context:
              trusted_ca: { filename: $c/ca.crt }
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: { exact: \"spiffe://weir.local/ns/bench/sa/client\" }"
    fi
    if [[ $tls_out == 1 ]]; then
        up="
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_params: { tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }
          tls_certificates:
          - certificate_chain: { filename: $c/client.crt }
            private_key: { filename: $c/client.key }
          validation_context:
            trusted_ca: { filename: $c/ca.crt }
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: { exact: \"spiffe://weir.local/ns/bench/sa/server\" }"
    fi
    cat >"$f" <<EOF
static_resources:
  listeners:
  - name: in
    address: { socket_address: { address: 127.0.0.1, port_value: $listen } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          codec_type: HTTP1
          generate_request_id: false
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: next }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true$down
  clusters:
  - name: next
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: next
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $next } } }$up
EOF
}

# weir_mesh FILE PORT MTLS [NAMESPACE]: the MeshConfig and the callee's Endpoints (namespace
# bench unless given), with its SPIFFE identity when MTLS is 1.
weir_mesh() {
    local f=$1 port=$2 mtls=$3 ns=${4:-bench}
    if [[ $mtls == 1 ]]; then
        cat >"$f" <<EOF
apiVersion: weir/v1
kind: MeshConfig
metadata: { name: default }
spec: { mtls: strict }
---
apiVersion: weir/v1
kind: Endpoints
metadata: { name: echo, namespace: $ns }
spec:
  addresses: ["127.0.0.1:$port"]
  identity: spiffe://weir.local/ns/bench/sa/server
EOF
    else
        cat >"$f" <<EOF
apiVersion: weir/v1
kind: MeshConfig
metadata: { name: default }
spec: { mtls: permissive }
---
apiVersion: weir/v1
kind: Endpoints
metadata: { name: echo, namespace: $ns }
spec: { addresses: ["127.0.0.1:$port"] }
EOF
    fi
}

# weir_policy: a ServicePolicy for echo with every caller-side resilience layer on, sized so
# that none of them ever fires under the benchmark's load.
weir_policy() {
    cat <<EOF
---
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: echo, namespace: bench }
spec:
  service: echo
  timeouts: { request: 10s, perTry: 5s }
  retries:
    attempts: 2
    on: [connect-failure, refused-stream, reset, "503"]
    backoff: { base: 25ms, max: 250ms }
    budget: { percent: 20, minPerSecond: 10 }
  circuitBreaker:
    consecutiveFailures: 5
    failureRate: { percent: 50, minRequests: 20, window: 10s }
    ejection: { base: 30s, max: 5m, maxPercent: 50 }
  bulkhead: { maxConcurrent: 10000, maxPending: 1000, pendingTimeout: 1s }
EOF
}
