#!/usr/bin/env python3
"""New connections per second against one listener (bench/run.sh; standard library only).

Every connection is new: TCP connect, then (with --cert) a full TLS 1.3 handshake with a client
certificate and ALPN http/1.1 (no session resumption: each socket starts without a session),
one `GET /` with `Connection: close`, the whole response read, then close. The same loop without
--cert is the plaintext baseline, so the client-side cost differs only by TLS.

Prints one JSON object: {"conns": ok, "errors": n, "seconds": wall, "first_error": "..."}.
The run is bounded by --seconds (plus at most one socket timeout for connections in flight).
"""
import argparse
import json
import socket
import ssl
import threading
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", required=True, help="HOST:PORT of the listener")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=8, help="connections in flight")
    p.add_argument("--host-header", default="echo")
    p.add_argument("--cert", help="client certificate (PEM); enables mTLS")
    p.add_argument("--key", help="client key (PEM)")
    p.add_argument("--ca", help="trust bundle for the server certificate (PEM)")
    a = p.parse_args()
    host, port_s = a.addr.rsplit(":", 1)
    port = int(port_s)

    ctx = None
    if a.cert:
        if not (a.key and a.ca):
            p.error("--cert needs --key and --ca")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        # Mesh certificates name SPIFFE ids (URI SANs), not hosts: verify the chain only.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(a.ca)
        ctx.load_cert_chain(a.cert, a.key)
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)

    request = (
        f"GET / HTTP/1.1\r\nHost: {a.host_header}\r\nConnection: close\r\n\r\n"
    ).encode()
    deadline = time.monotonic() + a.seconds
    lock = threading.Lock()
    totals = {"conns": 0, "errors": 0, "first_error": ""}

    def one() -> bool:
        with socket.create_connection((host, port), timeout=5) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = ctx.wrap_socket(raw) if ctx else raw  # the handshake happens here
            try:
                s.sendall(request)
                head = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    head = head or chunk[:16]
            finally:
                if s is not raw:
                    s.close()
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError(f"unexpected response {head!r}")
        return True

    def worker() -> None:
        ok = err = 0
        first = ""
        while time.monotonic() < deadline:
            try:
                one()
                ok += 1
            except (OSError, ssl.SSLError) as e:
                err += 1
                first = first or f"{type(e).__name__}: {e}"
        with lock:
            totals["conns"] += ok
            totals["errors"] += err
            totals["first_error"] = totals["first_error"] or first

    start = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.seconds + 10)
    totals["seconds"] = round(time.monotonic() - start, 3)
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
