#!/usr/bin/env python3
"""Helpers of the load-test kit (benches/load/run.sh); Python 3 standard library only.

    loadkit.py ports N                          N distinct free loopback ports
    loadkit.py render TEMPLATE OUT KEY=VALUE..  replace @KEY@ in TEMPLATE, write OUT
    loadkit.py wait-http URL [--pid PID]        wait (30 s) until URL answers 200
    loadkit.py wait-healthy ADMIN_PORT [--pid PID]
                                                wait (20 s) until Envoy's gateway cluster
                                                has passed a gRPC health check
    loadkit.py probe URL --token T [--chain]    one request as the load sends it; checks
                                                200 and, with --chain, that the response
                                                lists all six processors and echoes
                                                x-context-id; without, that none ran
    loadkit.py cpu-snap OUT NAME=PID...         CPU time used so far by each process and
                                                by the whole machine (from /proc)
    loadkit.py gw-snap OUT ADMIN_PORT           the gateway's stream and message totals
                                                (from its /metrics)
    loadkit.py check WRK_OUTPUT OUT_JSON --round R --config NAME
                     [--cpu BEFORE AFTER] [--gw BEFORE AFTER]
                                                parse `wrk --latency` output (and the CPU
                                                and gateway work between two snapshots),
                                                write JSON, fail on non-2xx responses or
                                                socket errors
    loadkit.py envoy-clean ADMIN_PORT           fail if Envoy counted an ext_proc failure
    loadkit.py report RESULTS_DIR               per-round tables, medians and ratios
"""

import argparse
import glob
import json
import os
import re
import socket
import statistics
import sys
import time
import urllib.error
import urllib.request

SIX = ["trivial", "timer", "digest", "jwt_auth", "context_check", "echo"]
CONFIGS = [
    ("one", "A: one filter, six processors"),
    ("six", "B: six filters, one processor each"),
    ("baseline", "C: no ext_proc (baseline)"),
]


def die(msg):
    print(f"loadkit: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def cmd_ports(a):
    socks = []
    for _ in range(a.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def cmd_render(a):
    text = open(a.template).read()
    for kv in a.values:
        key, _, value = kv.partition("=")
        text = text.replace(f"@{key}@", value)
    left = set(re.findall(r"@([A-Z_]+)@", text))
    if left:
        die(f"{a.template}: no value for {', '.join(sorted(left))}")
    with open(a.out, "w") as f:
        f.write(text)


def alive(pid):
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by the script) is not alive either.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def get(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (OSError, ValueError):
        return None, ""


def cmd_wait_http(a):
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        if get(a.url)[0] == 200:
            return
        if not alive(a.pid):
            die(f"process {a.pid} exited before {a.url} answered")
        time.sleep(0.05)
    die(f"{a.url} not ready after {a.timeout}s")


def envoy_stats(port):
    status, text = get(f"http://127.0.0.1:{port}/stats")
    if status != 200:
        die(f"Envoy admin on port {port} did not answer /stats")
    stats = {}
    for line in text.splitlines():
        k, sep, v = line.partition(": ")
        if sep and v.strip().isdigit():
            stats[k] = int(v)
    return stats


def cmd_wait_healthy(a):
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        s = envoy_stats(a.port)
        if (
            s.get("cluster.extproc_gateway.health_check.healthy", 0) >= 1
            or s.get("cluster.extproc_gateway.membership_healthy", 0) >= 1
        ):
            return
        if not alive(a.pid):
            die(f"Envoy {a.pid} exited")
        time.sleep(0.05)
    die(f"the gateway never became healthy in the Envoy with admin port {a.port}")


def cmd_probe(a):
    cid = f"probe-{int(time.time() * 1000)}"
    req = urllib.request.Request(
        a.url,
        data=cid.encode(),
        method="POST",
        headers={
            "x-context-id": cid,
            "authorization": f"Bearer {a.token}",
            "x-tenant-id": "acme",
            "content-type": "text/plain",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            status, headers, body = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        die(f"{a.url}: HTTP {e.code}: {e.read()[:300]!r}")
    except OSError as e:
        die(f"{a.url}: {e}")
    if status != 200:
        die(f"{a.url}: HTTP {status}")
    applied = [
        p.strip()
        for v in (headers.get_all("x-ext-procs-applied") or [])
        for p in v.split(",")
        if p.strip()
    ]
    if a.chain:
        if sorted(applied) != sorted(SIX):
            die(f"{a.url}: x-ext-procs-applied = {applied}, want each of {SIX} once")
        got = headers.get_all("x-context-id") or []
        if got != [cid]:
            die(f"{a.url}: x-context-id = {got}, want [{cid!r}]")
        try:
            echoed = json.loads(body)
        except ValueError:
            die(f"{a.url}: the upstream's answer is not JSON: {body[:200]!r}")
        if echoed.get("body") != cid:
            die(f"{a.url}: the upstream received body {echoed.get('body')!r}, want {cid!r}")
        print(f"  {a.url}: 200, x-ext-procs-applied: {','.join(applied)}, x-context-id: {cid}")
    else:
        if applied:
            die(f"{a.url}: the baseline ran processors: {applied}")
        print(f"  {a.url}: 200, no processor ran")


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unknown latency {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(text):
    out = {}
    for pct, key in (("50", "p50"), ("90", "p90"), ("99", "p99")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)\s*$", text, re.M)
        if not m:
            raise ValueError(f"no {pct}% line (was wrk run with --latency?)")
        out[key] = to_ms(m.group(1))
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if not m:
        raise ValueError("no Requests/sec line")
    out["rps"] = float(m.group(1))
    m = re.search(r"^\s+(\d+) requests in ([0-9.]+\w+)", text, re.M)
    if not m:
        raise ValueError("no 'N requests in' line")
    out["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    out["socket_errors"] = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
        if m
        else {}
    )
    return out


def proc_seconds(pid):
    """User + system CPU seconds of one process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_seconds():
    """(busy, total) CPU seconds of the whole machine, all cores."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks[:8])  # guest time is already in user
    hz = os.sysconf("SC_CLK_TCK")
    return (total - idle) / hz, total / hz


def cmd_cpu_snap(a):
    snap = {"wall": time.monotonic(), "machine": machine_seconds()}
    for kv in a.procs:
        name, _, pid = kv.partition("=")
        snap[name] = proc_seconds(int(pid))
    with open(a.out, "w") as f:
        json.dump(snap, f)


def cpu_between(before_file, after_file):
    """CPU used between two snapshots: each process and the machine, in cores (1.0 =
    one core busy all the time)."""
    b, e = json.load(open(before_file)), json.load(open(after_file))
    wall = e["wall"] - b["wall"]
    out = {
        k: (e[k] - b[k]) / wall for k in b if k not in ("wall", "machine") and k in e
    }
    out["machine"] = (e["machine"][0] - b["machine"][0]) / wall
    out["cores"] = os.cpu_count()
    return out


def cmd_gw_snap(a):
    status, text = get(f"http://127.0.0.1:{a.port}/metrics")
    if status != 200:
        die(f"the gateway's admin on port {a.port} did not answer /metrics")
    snap = {"streams": 0.0, "messages": 0.0, "message_seconds": 0.0}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if not rest:
            name, _, rest = line.partition(" ")
        value = line.rsplit(" ", 1)[-1]
        key = {
            "extproc_streams_total": "streams",
            "extproc_message_duration_seconds_count": "messages",
            "extproc_message_duration_seconds_sum": "message_seconds",
        }.get(name)
        if key:
            snap[key] += float(value)
    with open(a.out, "w") as f:
        json.dump(snap, f)


def cmd_check(a):
    text = open(a.wrk_output).read()
    try:
        r = parse_wrk(text)
    except ValueError as e:
        die(f"{a.wrk_output}: {e}\n{text}")
    r.update(round=a.round, config=a.config)
    if a.cpu:
        r["cpu"] = cpu_between(*a.cpu)
    if a.gw:
        b, e = (json.load(open(f)) for f in a.gw)
        # Every request of the run, and only those, reached the gateway (the snapshots
        # bracket the wrk run), so dividing by wrk's count gives per-request figures.
        n = max(r["requests"], 1)
        r["gateway"] = {
            "streams_per_request": (e["streams"] - b["streams"]) / n,
            "messages_per_request": (e["messages"] - b["messages"]) / n,
            "handler_us_per_request": (e["message_seconds"] - b["message_seconds"]) / n * 1e6,
        }
    with open(a.out_json, "w") as f:
        json.dump(r, f)
    print(
        f"  round {a.round} {a.config:<8} p50 {r['p50']:7.2f} ms  p90 {r['p90']:7.2f} ms  "
        f"p99 {r['p99']:7.2f} ms  {r['rps']:9.1f} req/s  ({r['requests']} requests)"
        + (
            "  CPU (cores): "
            + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu"].items() if k != "cores")
            if "cpu" in r
            else ""
        )
    )
    bad = []
    if r["non_2xx"]:
        bad.append(f"{r['non_2xx']} non-2xx/3xx responses")
    errs = {k: v for k, v in r["socket_errors"].items() if v}
    if errs:
        bad.append(f"socket errors {errs}")
    if r["requests"] == 0:
        bad.append("no request completed")
    if bad:
        die(f"{a.config}, round {a.round}: " + "; ".join(bad) + f"\n{text}")


def cmd_envoy_clean(a):
    s = envoy_stats(a.port)
    bad = {
        k: v
        for k, v in s.items()
        if "ext_proc" in k
        and v
        and k.rsplit(".", 1)[-1]
        in (
            "streams_failed",
            "spurious_msgs_received",
            "rejected_header_mutations",
            "message_timeouts",
            "failure_mode_allowed",
            "clear_route_cache_ignored",
        )
    }
    if bad:
        die(f"Envoy (admin {a.port}) counted ext_proc failures: {bad}")


def fmt(x, nd=2):
    return f"{x:.{nd}f}"


def cmd_report(a):
    rows = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(a.dir, "*.json")))]
    if not rows:
        die(f"no results in {a.dir}")
    by = {}
    for r in rows:
        by.setdefault(r["round"], {})[r["config"]] = r
    rounds = sorted(by)
    names = dict(CONFIGS)
    print("### Per round\n")
    print("| round | configuration | p50 ms | p90 ms | p99 ms | req/s | requests |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for n in rounds:
        for c, _ in CONFIGS:
            r = by[n].get(c)
            if r:
                print(
                    f"| {n} | {names[c]} | {fmt(r['p50'])} | {fmt(r['p90'])} | "
                    f"{fmt(r['p99'])} | {r['rps']:.0f} | {r['requests']} |"
                )
    med = {}
    for c, _ in CONFIGS:
        vals = [by[n][c] for n in rounds if c in by[n]]
        if vals:
            med[c] = {k: statistics.median(v[k] for v in vals) for k in ("p50", "p90", "p99", "rps")}
    print(f"\n### Medians of {len(rounds)} rounds\n")
    print("| configuration | p50 ms | p90 ms | p99 ms | req/s |")
    print("|---|---:|---:|---:|---:|")
    for c, _ in CONFIGS:
        if c in med:
            m = med[c]
            print(f"| {names[c]} | {fmt(m['p50'])} | {fmt(m['p90'])} | {fmt(m['p99'])} | {m['rps']:.0f} |")
    cpu_rows = [c for c, _ in CONFIGS if all("cpu" in by[n].get(c, {}) for n in rounds)]
    if cpu_rows:
        print(f"\n### CPU, median of {len(rounds)} rounds\n")
        print(
            "Cores busy during the run (1.00 = one core all the time) and CPU time per "
            "request; `machine` is every process on the machine, wrk included.\n"
        )
        print("| configuration | Envoy | gateway | upstream | machine | Envoy µs/req | gateway µs/req | machine µs/req |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for c in cpu_rows:
            vals = [by[n][c] for n in rounds]

            def m(k):
                return statistics.median(v["cpu"].get(k, 0.0) for v in vals)

            def per_req(k):
                return statistics.median(v["cpu"].get(k, 0.0) / v["rps"] * 1e6 for v in vals)

            print(
                f"| {names[c]} | {m('envoy'):.2f} | {m('gateway'):.2f} | {m('upstream'):.2f} | "
                f"{m('machine'):.2f} of {vals[0]['cpu']['cores']} | {per_req('envoy'):.0f} | "
                f"{per_req('gateway'):.0f} | {per_req('machine'):.0f} |"
            )
    gw_rows = [c for c, _ in CONFIGS if all("gateway" in by[n].get(c, {}) for n in rounds)]
    if gw_rows:
        print(f"\n### The gateway's side, median of {len(rounds)} rounds\n")
        print(
            "From the gateway's /metrics: ext_proc streams and messages per HTTP request, "
            "and the time spent handling them (decode, processors, encode; not the "
            "network or Envoy) per request.\n"
        )
        print("| configuration | streams/req | messages/req | gateway handler µs/req |")
        print("|---|---:|---:|---:|")
        for c in gw_rows:
            vals = [by[n][c]["gateway"] for n in rounds]

            def g(k):
                return statistics.median(v[k] for v in vals)

            print(
                f"| {names[c]} | {g('streams_per_request'):.2f} | "
                f"{g('messages_per_request'):.2f} | {g('handler_us_per_request'):.0f} |"
            )
    if not all(c in med for c, _ in CONFIGS):
        return

    def per_round(f):
        return [f(by[n]) for n in rounds if all(c in by[n] for c, _ in CONFIGS)]

    def spread(vals, nd=2):
        return f"{fmt(min(vals), nd)} .. {fmt(max(vals), nd)}"

    one, six, base = med["one"], med["six"], med["baseline"]
    print("\n### Ratios and added latency\n")
    print("| | from the medians | per round (min .. max) |")
    print("|---|---:|---:|")
    lines = [
        ("p50 six / one", six["p50"] / one["p50"], lambda r: r["six"]["p50"] / r["one"]["p50"], 2, ""),
        ("p99 six / one", six["p99"] / one["p99"], lambda r: r["six"]["p99"] / r["one"]["p99"], 2, ""),
        ("req/s one / six", one["rps"] / six["rps"], lambda r: r["one"]["rps"] / r["six"]["rps"], 2, ""),
        ("added p50, one filter (p50 one - p50 baseline)", one["p50"] - base["p50"], lambda r: r["one"]["p50"] - r["baseline"]["p50"], 2, " ms"),
        ("added p50, six filters (p50 six - p50 baseline)", six["p50"] - base["p50"], lambda r: r["six"]["p50"] - r["baseline"]["p50"], 2, " ms"),
        ("added p99, one filter", one["p99"] - base["p99"], lambda r: r["one"]["p99"] - r["baseline"]["p99"], 2, " ms"),
        ("added p99, six filters", six["p99"] - base["p99"], lambda r: r["six"]["p99"] - r["baseline"]["p99"], 2, " ms"),
        ("req/s one / baseline", one["rps"] / base["rps"], lambda r: r["one"]["rps"] / r["baseline"]["rps"], 2, ""),
        ("req/s six / baseline", six["rps"] / base["rps"], lambda r: r["six"]["rps"] / r["baseline"]["rps"], 2, ""),
    ]
    for label, value, f, nd, unit in lines:
        print(f"| {label} | {fmt(value, nd)}{unit} | {spread(per_round(f), nd)}{unit} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ports")
    s.add_argument("n", type=int)
    s.set_defaults(f=cmd_ports)
    s = sub.add_parser("render")
    s.add_argument("template")
    s.add_argument("out")
    s.add_argument("values", nargs="*")
    s.set_defaults(f=cmd_render)
    s = sub.add_parser("wait-http")
    s.add_argument("url")
    s.add_argument("--pid", type=int)
    s.add_argument("--timeout", type=float, default=30)
    s.set_defaults(f=cmd_wait_http)
    s = sub.add_parser("wait-healthy")
    s.add_argument("port", type=int)
    s.add_argument("--pid", type=int)
    s.add_argument("--timeout", type=float, default=20)
    s.set_defaults(f=cmd_wait_healthy)
    s = sub.add_parser("probe")
    s.add_argument("url")
    s.add_argument("--token", required=True)
    s.add_argument("--chain", action="store_true")
    s.set_defaults(f=cmd_probe)
    s = sub.add_parser("cpu-snap")
    s.add_argument("out")
    s.add_argument("procs", nargs="*")
    s.set_defaults(f=cmd_cpu_snap)
    s = sub.add_parser("gw-snap")
    s.add_argument("out")
    s.add_argument("port", type=int)
    s.set_defaults(f=cmd_gw_snap)
    s = sub.add_parser("check")
    s.add_argument("wrk_output")
    s.add_argument("out_json")
    s.add_argument("--cpu", nargs=2, metavar=("BEFORE", "AFTER"))
    s.add_argument("--gw", nargs=2, metavar=("BEFORE", "AFTER"))
    s.add_argument("--round", type=int, required=True)
    s.add_argument("--config", required=True)
    s.set_defaults(f=cmd_check)
    s = sub.add_parser("envoy-clean")
    s.add_argument("port", type=int)
    s.set_defaults(f=cmd_envoy_clean)
    s = sub.add_parser("report")
    s.add_argument("dir")
    s.set_defaults(f=cmd_report)
    a = p.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
