"""Reads one bench/run results folder and prints the side-by-side table, each figure the median of
its rounds, with ratios to `direct`, `nginx` and `haproxy-jwt`, and of the gate to `hyper-hop`
(the median of the ratios taken within each round, so that a slow minute of the machine cancels
out); the proxies' CPU time per request at the fixed rate; each round's req/s, to show the noise;
and the gate's own figures (start-up, idle RSS, RSS with 1,000 open connections)."""

import json
import pathlib
import re
import statistics
import sys

run_dir = pathlib.Path(sys.argv[1])
duration, connections, rate = sys.argv[2], sys.argv[3], sys.argv[4]
TARGETS = ["direct", "nginx", "haproxy-jwt", "hyper-hop", "gate"]


def wrk(path):
    text = path.read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    failures = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return rps, failures


def oha(path):
    data = json.loads(path.read_text())
    summary = data["summary"]
    codes = data.get("statusCodeDistribution", {})
    failures = sum(n for code, n in codes.items() if not code.startswith("2"))
    # Requests still in flight when the run's time is up are cut off by oha itself, not failed.
    failures += sum(n for error, n in data.get("errorDistribution", {}).items()
                    if error != "aborted due to deadline")
    pct = data.get("latencyPercentiles", {})
    ms = lambda key: (pct.get(key) or 0.0) * 1000.0
    return summary["requestsPerSec"], ms("p50"), ms("p99"), ms("p99.9"), failures, sum(codes.values())


def cpu_us_per_request(folder, target, run, answered):
    """The proxy's CPU time (all its processes and threads) per answered request of a fixed-rate
    run, in microseconds; None where it was not recorded (`direct` has no proxy)."""
    ticks = folder / f"{target}.{run}.cpu-ticks"
    if not ticks.exists():
        return None
    used, per_second = map(int, ticks.read_text().split())
    return used / per_second * 1e6 / answered if used and answered else None


def optional_number(path, scale=1.0):
    return int(path.read_text().strip() or 0) * scale if path.exists() else None


def busy_percent(folder, target, run):
    """How busy (proxy's core, load core) were during a req/s run, in %; (None, None) where not
    recorded. Older results folders hold the proxy's core for the h1 run only."""
    path = folder / f"{target}.{run}-busy-permille"
    if path.exists():
        proxy, load = (int(n) / 10 for n in path.read_text().split())
        return proxy, load
    if run == "h1":
        return optional_number(folder / f"{target}.h1-core-permille", 0.1), None
    return None, None


def one_round(folder):
    rows = {}
    for target in TARGETS:
        if not (folder / f"{target}.h1-rps.txt").exists():
            continue
        h1, f1 = wrk(folder / f"{target}.h1-rps.txt")
        callers, f2 = wrk(folder / f"{target}.h1-rps-1000-callers.txt")
        _, h1p50, h1p99, h1p999, f3, h1n = oha(folder / f"{target}.h1-rate.json")
        h2, _, _, _, f4, _ = oha(folder / f"{target}.h2-rps.json")
        _, h2p50, h2p99, h2p999, f5, h2n = oha(folder / f"{target}.h2-rate.json")
        rows[target] = dict(
            h1=h1, callers=callers, h1p50=h1p50, h1p99=h1p99, h1p999=h1p999, h2=h2,
            h2p50=h2p50, h2p99=h2p99, h2p999=h2p999,
            rss=optional_number(folder / f"{target}.rss-kb", 1 / 1024),
            failures=f1 + f2 + f3 + f4 + f5,
            h1cpu=cpu_us_per_request(folder, target, "h1-rate", h1n),
            h2cpu=cpu_us_per_request(folder, target, "h2-rate", h2n),
            **{f"{run}_{core}": busy
               for run in ("h1", "h1-1000-callers", "h2")
               for core, busy in zip(("proxy", "load"), busy_percent(folder, target, run))},
            ready=optional_number(folder / f"{target}.ready-ms"),
            idle=optional_number(folder / f"{target}.idle-rss-kb", 1 / 1024),
            held=optional_number(folder / f"{target}.rss-1000-connections-kb", 1 / 1024))
    return rows


folders = sorted(run_dir.glob("round-*"), key=lambda p: int(p.name.split("-")[1])) or [run_dir]
rounds = [one_round(folder) for folder in folders]
present = [t for t in TARGETS if any(t in r for r in rounds)]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def field(target, key):
    return median(r[target][key] for r in rounds if target in r)


def total(target, key):
    return sum(r[target][key] for r in rounds if target in r)


figure = lambda value, fmt: "-" if value is None else format(value, fmt)
out = [f"{connections} keep-alive connections, {duration} s per measurement, fixed rate {rate}/s; "
       f"proxy pinned to its own core; TLS on every hop; median of {len(rounds)} round(s)",
       "",
       f"{'target':12} {'h1 req/s':>9} {'1000 callers':>12} {'h1 p50/p99/p99.9 ms @' + rate:>24} "
       f"{'h2 req/s':>9} {'h2 p50/p99/p99.9 ms @' + rate:>24} {'peak RSS':>9} {'failed':>7}"]
for t in present:
    out.append(f"{t:12} {field(t, 'h1'):9.0f} {field(t, 'callers'):12.0f} "
               f"{field(t, 'h1p50'):8.2f}/{field(t, 'h1p99'):.2f}/{field(t, 'h1p999'):.2f} "
               f"{field(t, 'h2'):9.0f} {field(t, 'h2p50'):8.2f}/{field(t, 'h2p99'):.2f}/{field(t, 'h2p999'):.2f} "
               f"{figure(field(t, 'rss'), '7.1f')}MB {total(t, 'failures'):7d}")
out.append("")
for base in ("direct", "nginx", "haproxy-jwt", "hyper-hop"):
    if base not in present:
        continue
    for t in present:
        # hyper-hop is the gate's stack without its logic: only the gate is compared with it.
        if t == base or (base == "hyper-hop" and t != "gate"):
            continue
        both = [r for r in rounds if t in r and base in r]
        ratio = lambda key: median(r[t][key] / r[base][key] for r in both)
        delta = lambda key: median(r[t][key] - r[base][key] for r in both)
        out.append(f"{t} / {base}: h1 {ratio('h1'):.2f}x, 1000 callers {ratio('callers'):.2f}x, "
                   f"h2 {ratio('h2'):.2f}x, h1 p99 {delta('h1p99'):+.2f} ms, h2 p99 {delta('h2p99'):+.2f} ms")
out.append("")
out.append("req/s in each round (h1 / 1000 callers / h2), to show the noise:")
for t in present:
    out.append(f"{t:12} " + "   ".join(f"{r[t]['h1']:.0f} / {r[t]['callers']:.0f} / {r[t]['h2']:.0f}"
                                        if t in r else "-" for r in rounds))
if any(field(t, "h1cpu") is not None for t in present):
    out.append("")
    out.append(f"CPU time of the proxy per request at {rate}/s (all its processes and threads, kernel "
               "included)")
    for t in present:
        if field(t, "h1cpu") is None:
            continue
        out.append(f"{t:12} h1 {figure(field(t, 'h1cpu'), '.1f'):>6} us/request   "
                   f"h2 {figure(field(t, 'h2cpu'), '.1f'):>6} us/request")
if any(field(t, "h1_proxy") is not None for t in present):
    out.append("")
    out.append("how busy the proxy's core / the load core were during the req/s runs: where the load "
               "core is full\nand the proxy's is not, the load generator and upstream were the limit "
               "and the req/s is a floor")
    for t in present:
        busy = lambda run: (f"{figure(field(t, run + '_proxy'), '.0f'):>3} / "
                            f"{figure(field(t, run + '_load'), '.0f'):>3} %")
        out.append(f"{t:12} h1 {busy('h1')}   1000 callers {busy('h1-1000-callers')}   h2 {busy('h2')}")
if "gate" in present and field("gate", "ready") is not None:
    out.append("")
    out.append(f"gate: ready {field('gate', 'ready'):.0f} ms after start (keys from a local issuer), "
               f"idle RSS {figure(field('gate', 'idle'), '.1f')} MB, "
               f"RSS with 1,000 open connections {figure(field('gate', 'held'), '.1f')} MB")
print("\n".join(out))
