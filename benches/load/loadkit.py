#!/usr/bin/env python3
"""Helpers of the load-test kit (benches/load/run.sh); Python 3 standard library only.

    loadkit.py ports N                          N distinct free loopback ports
    loadkit.py render TEMPLATE OUT KEY=VALUE..  replace @KEY@ in TEMPLATE, write OUT
    loadkit.py wait-http URL [--pid PID]        wait (30 s) until URL answers 200
    loadkit.py wait-tcp HOST:PORT [--pid PID]   wait (30 s) until HOST:PORT accepts
    loadkit.py wait-healthy ADMIN_PORT [--pid PID]
                                                wait (20 s) until Envoy's ext_proc cluster
                                                has passed a gRPC health check
    loadkit.py probe URL --token T [--chain]    one request as the load sends it; checks
                                                200 and, with --chain, that the response
                                                lists all six processors and echoes
                                                x-context-id; without, that none ran
    loadkit.py cpu-snap OUT NAME=PID...         CPU time used so far by each process and
                                                by the whole machine (from /proc)
    loadkit.py gw-snap OUT ADMIN_PORT           the gateway's stream and message totals
                                                (from its /metrics)
    loadkit.py envoy-snap OUT ADMIN_PORT        Envoy's ext_proc streams and messages
                                                sent so far, all filters (from /stats)
    loadkit.py check WRK_OUTPUT OUT_JSON --round R --workload W --config NAME
                     [--cpu BEFORE AFTER] [--envoy BEFORE AFTER] [--gw BEFORE AFTER]
                                                parse `wrk --latency` output (and the CPU,
                                                Envoy and gateway work between two
                                                snapshots), write JSON, fail on non-2xx
                                                responses or socket errors
    loadkit.py envoy-clean ADMIN_PORT           fail if Envoy counted an ext_proc failure
    loadkit.py report RESULTS_DIR [--grpc DIR] [--hold DIR]
                                                medians per workload, added latency, ratios
                                                to the floor, the performance targets, the
                                                direct gRPC runs and the held streams
                                                (extproc-load JSON)
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
    ("baseline", "Envoy alone"),
    ("floor", "floor server, one filter"),
    ("empty", "gateway, empty chain"),
    ("one", "gateway, six processors, one filter"),
    ("one-override", "the same, allow_mode_override on"),
    ("six", "six filters, one processor each"),
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


def cmd_wait_tcp(a):
    host, _, port = a.addr.rpartition(":")
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            pass
        if not alive(a.pid):
            die(f"process {a.pid} exited before {a.addr} accepted")
        time.sleep(0.05)
    die(f"{a.addr} not accepting after {a.timeout}s")


def cmd_wait_healthy(a):
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        s = envoy_stats(a.port)
        # Every cluster but the upstream is an ext_proc server.
        if any(
            v >= 1
            for k, v in s.items()
            if k.startswith("cluster.")
            and not k.startswith("cluster.upstream.")
            and k.endswith(".health_check.healthy")
        ):
            return
        if not alive(a.pid):
            die(f"Envoy {a.pid} exited")
        time.sleep(0.05)
    die(f"the ext_proc server never became healthy in the Envoy with admin port {a.port}")


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


def cmd_envoy_snap(a):
    s = envoy_stats(a.port)

    def total(suffix):
        return sum(v for k, v in s.items() if ".ext_proc" in k and k.endswith(suffix))

    with open(a.out, "w") as f:
        json.dump({"streams": total(".streams_started"), "messages": total(".stream_msgs_sent")}, f)


def cmd_check(a):
    text = open(a.wrk_output).read()
    try:
        r = parse_wrk(text)
    except ValueError as e:
        die(f"{a.wrk_output}: {e}\n{text}")
    r.update(round=a.round, workload=a.workload, config=a.config)
    if a.cpu:
        r["cpu"] = cpu_between(*a.cpu)
    if a.envoy:
        b, e = (json.load(open(f)) for f in a.envoy)
        n = max(r["requests"], 1)
        r["envoy"] = {
            "streams_per_request": (e["streams"] - b["streams"]) / n,
            "messages_per_request": (e["messages"] - b["messages"]) / n,
        }
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
        f"  round {a.round} {a.workload:<9} {a.config:<12} p50 {r['p50']:7.2f} ms  p90 {r['p90']:7.2f} ms  "
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
        die(f"{a.workload} {a.config}, round {a.round}: " + "; ".join(bad) + f"\n{text}")


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


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def spread(vals, nd=2):
    vals = [v for v in vals if v is not None]
    return f"{fmt(min(vals), nd)} .. {fmt(max(vals), nd)}" if vals else "-"


def per_req_us(r, proc):
    """CPU microseconds of `proc` per request in run `r`."""
    cpu = r.get("cpu", {})
    return cpu[proc] / r["rps"] * 1e6 if proc in cpu and r["rps"] > 0 else None


def cmd_report(a):
    rows = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(a.dir, "*.json")))]
    if not rows:
        die(f"no results in {a.dir}")
    # by[workload][round][config]
    by = {}
    for r in rows:
        by.setdefault(r["workload"], {}).setdefault(r["round"], {})[r["config"]] = r
    names = dict(CONFIGS)
    order = [c for c, _ in CONFIGS]

    def added(rnd, c, key="p50"):
        if c in rnd and "baseline" in rnd:
            return rnd[c][key] - rnd["baseline"][key]
        return None

    def ratio(x, y):
        return x / y if x is not None and y not in (None, 0) else None

    # Per-round series of a figure, for the medians and spreads below.
    def series(w, f):
        return [f(by[w][n]) for n in sorted(by.get(w, {}))]

    workloads = sorted(by, key=lambda w: (w.split("-")[0], int(w.split("-c")[1])))
    for w in workloads:
        rounds = sorted(by[w])
        configs = [c for c in order if any(c in by[w][n] for n in rounds)]
        print(f"### {w}: medians of {len(rounds)} rounds\n")
        print(
            "| configuration | p50 ms | p90 ms | p99 ms | req/s | added p50 ms | added p50 / floor's | "
            "Envoy µs/req | server µs/req | upstream µs/req | machine µs/req | ext_proc msgs/req | gateway handler µs/req |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in configs:
            vals = [by[w][n][c] for n in rounds if c in by[w][n]]

            def m(k):
                return med([v[k] for v in vals])

            add = med(series(w, lambda rnd: added(rnd, c)))
            to_floor = med(series(w, lambda rnd: ratio(added(rnd, c), added(rnd, "floor"))))
            cpu = {p: med([per_req_us(v, p) for v in vals]) for p in ("envoy", "server", "upstream", "machine")}
            msgs = med([v.get("envoy", {}).get("messages_per_request") for v in vals])
            handler = med([v.get("gateway", {}).get("handler_us_per_request") for v in vals])

            def show(x, nd=0):
                return "-" if x is None else fmt(x, nd)

            print(
                f"| {names[c]} | {fmt(m('p50'))} | {fmt(m('p90'))} | {fmt(m('p99'))} | {m('rps'):.0f} | "
                f"{show(add, 3) if c != 'baseline' else '-'} | {show(to_floor, 2) if c not in ('baseline', 'floor') else '-'} | "
                f"{show(cpu['envoy'])} | {show(cpu['server'])} | {show(cpu['upstream'])} | {show(cpu['machine'])} | "
                f"{show(msgs, 2) if c != 'baseline' else '-'} | {show(handler)} |"
            )
        print()

    # The targets of the performance issue, where the runs they need are here.
    print("### Targets\n")
    print("Each ratio is taken per round (configurations side by side in one round), then the median of the rounds; the range is the rounds' min .. max.\n")
    print("| target | goal | median | rounds | met |")
    print("|---|---:|---:|---:|---|")

    def target(label, w, f, goal, below):
        if w not in by:
            return
        vals = series(w, f)
        m = med(vals)
        if m is None:
            return
        met = m <= goal if below else m >= goal
        print(f"| {label} | {'≤' if below else '≥'} {goal} | {fmt(m)} | {spread(vals)} | {'yes' if met else '**no**'} |")

    for w in ("get-c1", "post-c1"):
        target(f"{w}: added p50, gateway six / floor (override off)", w,
               lambda rnd: ratio(added(rnd, "one"), added(rnd, "floor")), 1.05, True)
    for w in ("get-c16", "post-c16"):
        target(f"{w}: req/s, gateway six / floor", w,
               lambda rnd: ratio(rnd.get("one", {}).get("rps"), rnd.get("floor", {}).get("rps")), 1.0, False)
        target(f"{w}: server CPU per request, gateway six / floor", w,
               lambda rnd: ratio(per_req_us(rnd["one"], "server") if "one" in rnd else None,
                                 per_req_us(rnd["floor"], "server") if "floor" in rnd else None), 1.15, True)
    target("get-c1: added p50, gateway six with override / floor", "get-c1",
           lambda rnd: ratio(added(rnd, "one-override"), added(rnd, "floor")), 0.9, True)
    print()
    print("### One filter against six\n")
    print("| workload | p50 six / one | req/s one / six | added p50 six / one |")
    print("|---|---:|---:|---:|")
    for w in workloads:
        p = series(w, lambda rnd: ratio(rnd.get("six", {}).get("p50"), rnd.get("one", {}).get("p50")))
        q = series(w, lambda rnd: ratio(rnd.get("one", {}).get("rps"), rnd.get("six", {}).get("rps")))
        d = series(w, lambda rnd: ratio(added(rnd, "six"), added(rnd, "one")))
        if med(p) is not None:
            print(f"| {w} | {fmt(med(p))} ({spread(p)}) | {fmt(med(q))} ({spread(q)}) | {fmt(med(d))} ({spread(d)}) |")

    if a.hold:
        hold_report(a.hold)
    if a.grpc:
        byr = by_round(a.grpc)
        if byr:
            print(f"\n### Direct gRPC load, no Envoy: medians of {len(byr)} rounds\n")
            print("extproc-load, 16 exchanges in flight on 2 connections, each the four messages of a 1 KiB POST (headers and BUFFERED bodies), every answer checked.\n")
            print("| server | exchanges/s | p50 ms | p99 ms | server µs/exchange | exchanges per server CPU-second | / floor's |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            label = {
                "floor": "floor",
                "empty": "gateway, empty chain",
                "six": "gateway, six processors",
                "bare": "six, telemetry off (no request metrics, no traces)",
                "traced": "six, telemetry on (request metrics, every trace to OTLP)",
                "sampled": "six, telemetry on (request metrics, 1 % of traces to OTLP)",
            }
            for t in ("floor", "empty", "six", "bare", "traced", "sampled"):
                vals = [byr[n][t] for n in sorted(byr) if t in byr[n]]
                if not vals:
                    continue
                rel = [ratio(byr[n][t]["exchanges_per_server_cpu_s"], byr[n].get("floor", {}).get("exchanges_per_server_cpu_s"))
                       for n in sorted(byr) if t in byr[n]]
                print(
                    f"| {label[t]} | {med([v['rate'] for v in vals]):.0f} | {fmt(med([v['latency_ms']['p50'] for v in vals]), 3)} | "
                    f"{fmt(med([v['latency_ms']['p99'] for v in vals]), 3)} | {fmt(med([v['server_cpu_us_per_exchange'] for v in vals]), 1)} | "
                    f"{med([v['exchanges_per_server_cpu_s'] for v in vals]):.0f} | "
                    f"{'-' if t == 'floor' else fmt(med(rel)) + ' (' + spread(rel) + ')'} |"
                )
            rel = [ratio(byr[n].get("six", {}).get("exchanges_per_server_cpu_s"), byr[n].get("floor", {}).get("exchanges_per_server_cpu_s")) for n in sorted(byr)]
            m = med(rel)
            if m is not None:
                print(f"\nTarget: exchanges per server CPU-second, gateway six / floor ≥ 0.9: **{fmt(m)}** ({spread(rel)}), {'met' if m >= 0.9 else '**not met**'}.")
            telemetry_report(byr, a.grpc)


def telemetry_report(byr, directory):
    """Telemetry on against off, per round, from the direct runs `bare`, `traced` and `sampled`."""
    for t, what in (("traced", "every stream traced"), ("sampled", "1 % of streams traced")):
        rounds = [n for n in sorted(byr) if "bare" in byr[n] and t in byr[n]]
        if not rounds:
            continue
        rate = [byr[n][t]["rate"] / byr[n]["bare"]["rate"] for n in rounds]
        cpu = [
            byr[n][t]["exchanges_per_server_cpu_s"] / byr[n]["bare"]["exchanges_per_server_cpu_s"]
            for n in rounds
            if byr[n][t].get("exchanges_per_server_cpu_s") and byr[n]["bare"].get("exchanges_per_server_cpu_s")
        ]
        m = med(rate)
        line = (f"\nTarget: throughput with telemetry on ({what}, request metrics) / off ≥ 0.95: "
                f"**{fmt(m)}** ({spread(rate)}), {'met' if m >= 0.95 else '**not met**'}.")
        if cpu:
            line += f" Exchanges per server CPU-second, on / off: {fmt(med(cpu))} ({spread(cpu)})."
        sink = os.path.join(directory, f"sink-{t}.txt")
        if os.path.exists(sink):
            words = open(sink).read().split()
            spans = int(words[1]) if len(words) >= 2 and words[0] == "spans" else 0
            # Warm-up exchanges are traced too, but not counted in the reports.
            measured = sum(byr[n][t]["exchanges"] for n in rounds)
            line += f" The OTLP sink received {spans:,} spans, {spans / measured:.2f} per measured exchange (warm-ups add a few)."
        print(line)


def by_round(directory):
    """extproc-load's JSON reports named roundR-NAME.json: {R: {NAME: report}}."""
    byr = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        rnd, _, name = os.path.basename(path)[len("round"):-len(".json")].partition("-")
        byr.setdefault(int(rnd), {})[name] = json.load(open(path))
    return byr


def hold_report(directory):
    byr = by_round(directory)
    if not byr:
        return
    print(f"\n### Idle streams: medians of {len(byr)} rounds\n")
    print("10,000 streams held between phases (request headers answered, the body not sent), each on a freshly started server, over 50 connections; resident memory before and with all held.\n")
    print("| server | RSS before KiB | RSS held KiB | KiB per held stream |")
    print("|---|---:|---:|---:|")
    for t in ("floor", "gateway"):
        vals = [byr[n][t] for n in sorted(byr) if t in byr[n]]
        if vals:
            print(
                f"| {t} | {med([v['rss_before_kib'] for v in vals]):.0f} | {med([v['rss_held_kib'] for v in vals]):.0f} | "
                f"{fmt(med([v['kib_per_stream'] for v in vals]))} |"
            )
    rel = [
        byr[n]["gateway"]["kib_per_stream"] / byr[n]["floor"]["kib_per_stream"]
        for n in sorted(byr)
        if "gateway" in byr[n] and byr[n].get("floor", {}).get("kib_per_stream")
    ]
    if rel:
        m = med(rel)
        print(f"\nTarget: memory per idle stream, gateway / floor ≤ 1.0: **{fmt(m)}** ({spread(rel)}), {'met' if m <= 1.0 else '**not met**'}.")


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
    s = sub.add_parser("wait-tcp")
    s.add_argument("addr")
    s.add_argument("--pid", type=int)
    s.add_argument("--timeout", type=float, default=30)
    s.set_defaults(f=cmd_wait_tcp)
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
    s = sub.add_parser("envoy-snap")
    s.add_argument("out")
    s.add_argument("port", type=int)
    s.set_defaults(f=cmd_envoy_snap)
    s = sub.add_parser("check")
    s.add_argument("wrk_output")
    s.add_argument("out_json")
    s.add_argument("--cpu", nargs=2, metavar=("BEFORE", "AFTER"))
    s.add_argument("--gw", nargs=2, metavar=("BEFORE", "AFTER"))
    s.add_argument("--envoy", nargs=2, metavar=("BEFORE", "AFTER"))
    s.add_argument("--round", type=int, required=True)
    s.add_argument("--workload", required=True)
    s.add_argument("--config", required=True)
    s.set_defaults(f=cmd_check)
    s = sub.add_parser("envoy-clean")
    s.add_argument("port", type=int)
    s.set_defaults(f=cmd_envoy_clean)
    s = sub.add_parser("report")
    s.add_argument("dir")
    s.add_argument("--grpc")
    s.add_argument("--hold")
    s.set_defaults(f=cmd_report)
    a = p.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
