#!/usr/bin/env python3
"""Results of bench/run.sh: normalises wrk/oha/connrate output into JSON lines and renders the
markdown report (medians over runs). Standard library only.

  results.py wrk  --row R --load L --run N --cpu-ticks T --clk-tck HZ  < wrk stdout
  results.py oha  --row R --load L --run N --cpu-ticks T --clk-tck HZ  < oha JSON
  results.py conn --row R --run N --cpu-ticks T --clk-tck HZ            < connrate JSON
  results.py report DIR        (reads DIR/meta.json and DIR/raw.jsonl, prints markdown)

Each ingest prints one JSON line for raw.jsonl. cpu-ticks is utime+stime (clock ticks) of every
proxy process of the row, summed over both hops, from /proc/PID/stat before and after the load;
-1 means "no proxy" (the direct row).
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

ROWS = [
    ("direct", "direct: client → upstream"),
    ("weir", "weir ×2 (outbound → inbound), plaintext"),
    ("weir-mtls", "weir ×2, mTLS"),
    ("weir-policy", "weir ×2, plaintext, full resilience policy"),
    ("nginx", "nginx ×2, plaintext"),
    ("nginx-mtls", "nginx ×2, mTLS hop 1 → 2"),
    ("haproxy", "HAProxy ×2, plaintext"),
    ("haproxy-mtls", "HAProxy ×2, mTLS hop 1 → 2"),
    ("envoy", "Envoy ×2, plaintext"),
    ("envoy-mtls", "Envoy ×2, mTLS hop 1 → 2"),
    ("weir-base", "weir ×2, plaintext, baseline binary"),
    ("weir-base-mtls", "weir ×2, mTLS, baseline binary"),
]
LABEL = dict(ROWS)


def cpu_us(ticks: int, hz: int) -> float | None:
    return None if ticks < 0 else ticks * 1e6 / hz


def ingest_wrk(text: str) -> dict:
    line = next((ln for ln in text.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit("results.py: no WRKJSON line in wrk output:\n" + text[-2000:])
    w = json.loads(line[len("WRKJSON "):])
    secs = w["duration_us"] / 1e6
    errors = sum(w[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "non2xx"))
    return {
        "requests": w["requests"],
        "seconds": secs,
        "rps": w["requests"] / secs if secs else 0.0,
        "errors": errors,
        "p50_us": w["p50_us"],
        "p99_us": w["p99_us"],
        "p999_us": w["p999_us"],
    }


def ingest_oha(text: str) -> dict:
    try:
        o = json.loads(text)
    except json.JSONDecodeError:
        raise SystemExit("results.py: oha did not print JSON:\n" + text[-2000:])
    codes = o.get("statusCodeDistribution") or {}
    ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
    bad_status = sum(v for k, v in codes.items() if not str(k).startswith("2"))
    # Requests still in flight when -z ends are cancelled by oha ("aborted due to deadline"):
    # an artefact of stopping, not an error of the path.
    transport = sum(v for k, v in (o.get("errorDistribution") or {}).items()
                    if "deadline" not in k)
    pct = o.get("latencyPercentiles") or {}
    secs = o["summary"]["total"]

    def us(key: str) -> float:
        v = pct.get(key)
        return float("nan") if v is None else v * 1e6

    return {
        "requests": ok,
        "seconds": secs,
        "rps": ok / secs if secs else 0.0,
        "errors": bad_status + transport,
        "p50_us": us("p50"),
        "p99_us": us("p99"),
        "p999_us": us("p99.9"),
    }


def ingest(args: argparse.Namespace) -> None:
    text = sys.stdin.read()
    rec = {"kind": "load" if args.cmd != "conn" else "conn", "row": args.row, "run": args.run}
    if args.cmd == "wrk":
        rec.update(load=args.load, **ingest_wrk(text))
        n = rec["requests"]
    elif args.cmd == "oha":
        rec.update(load=args.load, **ingest_oha(text))
        n = rec["requests"]
    else:
        c = json.loads(text)
        rec.update(conns=c["conns"], errors=c["errors"], seconds=c["seconds"],
                   first_error=c.get("first_error", ""))
        rec["rate"] = c["conns"] / c["seconds"] if c["seconds"] else 0.0
        n = c["conns"]
    cpu = cpu_us(args.cpu_ticks, args.clk_tck)
    rec["cpu_us_total"] = cpu
    rec["cpu_us_per"] = None if cpu is None or n == 0 else cpu / n
    rec["cpu_busy"] = None if cpu is None or not rec["seconds"] else cpu / 1e6 / rec["seconds"]
    print(json.dumps(rec))
    per = "" if rec["cpu_us_per"] is None else f"  proxy CPU {rec['cpu_us_per']:.1f} µs/{'conn' if args.cmd == 'conn' else 'req'}"
    if args.cmd == "conn":
        line = f"{rec['rate']:9,.0f} new conns/s"
    else:
        line = (f"{rec['rps']:9,.0f} req/s  p50 {rec['p50_us']:7,.0f}  p99 {rec['p99_us']:7,.0f}  "
                f"p99.9 {rec['p999_us']:7,.0f} µs")
    errs = f"  errors {rec['errors']}" if rec["errors"] else ""
    print(f"  {args.row:<13} {args.load:<6} run {args.run}: {line}{per}{errs}", file=sys.stderr)


# === report ===

def med(values):
    vals = [v for v in values if v is not None and v == v]
    return statistics.median(vals) if vals else None


def fmt(v, digits=0, sign=False):
    if v is None:
        return "–"
    s = f"{v:+,.{digits}f}" if sign else f"{v:,.{digits}f}"
    return s


def load_title(load: str, meta: dict) -> str:
    if load == "c16":
        return f"Closed loop: `wrk -t1 -c16 -d{meta['secs']}s`"
    rate = load[1:]
    return (f"Open loop at {rate} req/s: `oha -c16 -q {rate} --latency-correction "
            f"-z {meta['secs']}s` (coordinated omission corrected)")


def report(d: Path) -> None:
    meta = json.loads((d / "meta.json").read_text())
    recs = [json.loads(ln) for ln in (d / "raw.jsonl").read_text().splitlines() if ln.strip()]
    rows = [r for r, _ in ROWS if r in meta["rows"]]
    out = []
    w = out.append
    w(f"## Weir vs nginx, HAProxy and Envoy (`{meta['command']}`)")
    w("")
    w(f"{meta['date']}, commit `{meta['commit']}`{meta['dirty']}, {meta['nproc']} cores "
      f"(`nproc`), {meta['cpu']}, {meta['kernel']}. {meta['mode']}: each figure is the median of "
      f"{meta['runs']} run(s) of {meta['secs']} s, rows interleaved.")
    w(f"Tools: {meta['versions']}.")
    if meta.get("weir_binary"):
        w(f"weir-proxy binary: `{meta['weir_binary']}` (not built from the work tree by this run).")
    w("Upstream: nginx `return 200` with a 1 KiB body (1 worker). Proxies pinned to core 1 "
      "(`taskset -c 1`; one worker/thread each), load generator and upstream to core 0. "
      "Two hops per row (client → hop 1 → hop 2 → upstream), keep-alive to the upstream, "
      "retries off. \"+p50\" etc. = row latency minus the direct row's at the same load; "
      "CPU µs/req = utime+stime of both hops (all their processes) over the run ÷ requests "
      "answered.")
    w("")
    by = {}
    for r in recs:
        if r["kind"] == "load":
            by.setdefault((r["row"], r["load"]), []).append(r)
    loads = [ld for ld in meta["loads"] if any((row, ld) in by for row in rows)]
    summary = {}
    for ld in loads:
        w(f"### {load_title(ld, meta)}")
        w("")
        w("| path | req/s | vs direct | p50 µs | p99 µs | p99.9 µs | +p50 µs | +p99 µs | "
          "+p99.9 µs | proxy CPU µs/req | proxy core busy | errors |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        base = None
        for row in rows:
            rs = by.get((row, ld))
            if not rs:
                continue
            m = {k: med(x.get(k) for x in rs)
                 for k in ("rps", "p50_us", "p99_us", "p999_us", "cpu_us_per", "cpu_busy")}
            m["errors"] = sum(x["errors"] for x in rs)
            summary[(row, ld)] = m
            if row == "direct":
                base = m
            ratio = m["rps"] / base["rps"] if base and base["rps"] else None
            add = {k: (m[k] - base[k]) if base and row != "direct" and m[k] is not None
                   and base[k] is not None else None for k in ("p50_us", "p99_us", "p999_us")}
            busy = None if m["cpu_busy"] is None else f"{m['cpu_busy'] * 100:.0f} %"
            w(f"| {LABEL[row]} | {fmt(m['rps'])} | {fmt(ratio, 2)} | {fmt(m['p50_us'])} | "
              f"{fmt(m['p99_us'])} | {fmt(m['p999_us'])} | {fmt(add['p50_us'], sign=True)} | "
              f"{fmt(add['p99_us'], sign=True)} | {fmt(add['p999_us'], sign=True)} | "
              f"{fmt(m['cpu_us_per'], 1)} | {busy or '–'} | {m['errors']} |")
        w("")
        if ld == "c16":
            w("The closed loop runs each path as fast as it goes, so its latencies are at "
              "different rates (the +columns there are not \"added at the same rate\"; the "
              "open-loop tables are).")
            w("")

    mtls_lines = []
    for ld in loads:
        b, c = summary.get(("weir", ld)), summary.get(("weir-mtls", ld))
        if not (b and c):
            continue
        d_cpu = (c["cpu_us_per"] - b["cpu_us_per"]) if c["cpu_us_per"] and b["cpu_us_per"] else None
        name = "wrk -c16" if ld == "c16" else f"{ld[1:]} req/s"
        extra = ""
        if ld == "c16":
            extra = f", req/s ×{c['rps'] / b['rps']:.2f}" if b["rps"] else ""
        mtls_lines.append(
            f"- {name}: p50 {fmt(c['p50_us'] - b['p50_us'], sign=True)} µs, "
            f"p99 {fmt(c['p99_us'] - b['p99_us'], sign=True)} µs, "
            f"p99.9 {fmt(c['p999_us'] - b['p999_us'], sign=True)} µs, "
            f"CPU {fmt(d_cpu, 1, sign=True)} µs/req{extra}")
    if mtls_lines:
        w("**What mTLS costs weir once connections are reused** (row \"weir ×2, mTLS\" minus "
          "\"weir ×2, plaintext\"; the outbound keeps one multiplexed HTTP/2 connection to its "
          "peer, so this is record encryption, not handshakes):")
        w("")
        out.extend(mtls_lines)
        w("")

    before_after(w, summary, loads, meta)

    mems = {r["row"]: r for r in recs if r["kind"] == "mem"}
    if mems:
        w("### Memory per proxy process group (hop 1 / hop 2, MiB)")
        w("")
        w("| path | idle RSS | peak RSS (VmHWM) |")
        w("|---|---:|---:|")
        for row in rows:
            m = mems.get(row)
            if not m:
                continue
            idle = " / ".join(f"{h['idle_kb'] / 1024:.1f}" for h in m["hops"])
            hwm = " / ".join(f"{h['hwm_kb'] / 1024:.1f}" for h in m["hops"])
            w(f"| {LABEL[row]} | {idle} | {hwm} |")
        w("")
        w("Idle = VmRSS after start-up and one request; peak = VmHWM after all loads. nginx "
          "counts master + worker (shared pages counted twice).")
        w("")

    conns = {}
    for r in recs:
        if r["kind"] == "conn":
            conns.setdefault(r["row"], []).append(r)
    if conns:
        w(f"### New connections per second at hop 2 (`bench/lib/connrate.py`, "
          f"{meta['conn_concurrency']} in flight, {meta['conn_secs']} s)")
        w("")
        w("| listener at hop 2 | new conns/s | proxy CPU µs/conn | ≈ conns/s per proxy core | proxy core busy | errors |")
        w("|---|---:|---:|---:|---:|---:|")
        cm = {}
        for row in rows:
            rs = conns.get(row)
            if not rs:
                continue
            m = {k: med(x.get(k) for x in rs) for k in ("rate", "cpu_us_per", "cpu_busy")}
            m["errors"] = sum(x["errors"] for x in rs)
            cm[row] = m
            kind = "mTLS (client cert required)" if row.endswith("-mtls") else "plaintext"
            name = LABEL[row].split(" ")[0] + " " + ("inbound" if row.startswith("weir") else "hop 2")
            busy = None if m["cpu_busy"] is None else f"{m['cpu_busy'] * 100:.0f} %"
            err = rs[0].get("first_error") if m["errors"] else ""
            cap = 1e6 / m["cpu_us_per"] if m["cpu_us_per"] else None
            w(f"| {name}, {kind} | {fmt(m['rate'])} | {fmt(m['cpu_us_per'], 1)} | {fmt(cap)} | "
              f"{busy or '–'} | {m['errors']}{' (' + err + ')' if err else ''} |")
        w("")
        if "weir" in cm and "weir-mtls" in cm and cm["weir"]["cpu_us_per"] and cm["weir-mtls"]["cpu_us_per"]:
            w(f"A new mTLS connection costs the weir inbound "
              f"{cm['weir-mtls']['cpu_us_per'] - cm['weir']['cpu_us_per']:,.0f} µs of CPU more than "
              f"a plaintext one (full TLS 1.3 handshake, ECDSA P-256 client certificate "
              f"verified; {cm['weir-mtls']['rate'] / cm['weir']['rate']:.2f}× the plaintext "
              f"connection rate with the same client). Each connection carries one "
              f"`GET /` with `Connection: close`.")
            w("")
    print("\n".join(out))


def before_after(w, summary: dict, loads: list, meta: dict) -> None:
    """The weir rows against the same rows run with --baseline's binary, load by load."""
    if not meta.get("baseline"):
        return
    lines = []
    for now, then in (("weir", "weir-base"), ("weir-mtls", "weir-base-mtls")):
        for ld in loads:
            a, b = summary.get((now, ld)), summary.get((then, ld))
            if not (a and b):
                continue
            cpu = (f"{fmt(b['cpu_us_per'], 1)} → {fmt(a['cpu_us_per'], 1)} "
                   f"({(a['cpu_us_per'] / b['cpu_us_per'] - 1) * 100:+.1f} %)"
                   if a["cpu_us_per"] and b["cpu_us_per"] else "–")
            rps = f"×{a['rps'] / b['rps']:.2f}" if b["rps"] else "–"
            lines.append(
                f"| {LABEL[now]} | {ld} | {fmt(b['rps'])} → {fmt(a['rps'])} ({rps}) | "
                f"{fmt(b['p50_us'])} → {fmt(a['p50_us'])} | {fmt(b['p99_us'])} → {fmt(a['p99_us'])} | "
                f"{cpu} |")
    if not lines:
        return
    w(f"### Before → after: baseline `{meta['baseline']}` → this build")
    w("")
    w("| path | load | req/s | p50 µs | p99 µs | proxy CPU µs/req |")
    w("|---|---|---:|---:|---:|---:|")
    for ln in lines:
        w(ln)
    w("")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("wrk", "oha", "conn"):
        s = sub.add_parser(name)
        s.add_argument("--row", required=True)
        s.add_argument("--load", default="conn")
        s.add_argument("--run", type=int, required=True)
        s.add_argument("--cpu-ticks", type=int, required=True)
        s.add_argument("--clk-tck", type=int, required=True)
    r = sub.add_parser("report")
    r.add_argument("dir", type=Path)
    a = p.parse_args()
    if a.cmd == "report":
        report(a.dir)
    else:
        ingest(a)


if __name__ == "__main__":
    main()
