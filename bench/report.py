"""Reads one bench/run results folder and prints the side-by-side table (ratios to `direct` and
to `nginx`), plus the gate's own figures (start-up, idle RSS, RSS with 1,000 open connections)."""

import json
import pathlib
import re
import sys

results = pathlib.Path(sys.argv[1])
duration, connections, rate = sys.argv[2], sys.argv[3], sys.argv[4]
TARGETS = ["direct", "nginx", "haproxy-jwt", "gate"]


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
    return summary["requestsPerSec"], ms("p50"), ms("p99"), ms("p99.9"), failures


rows = {}
for target in TARGETS:
    if not (results / f"{target}.h1-rps.txt").exists():
        continue
    h1, f1 = wrk(results / f"{target}.h1-rps.txt")
    callers, f2 = wrk(results / f"{target}.h1-rps-1000-callers.txt")
    _, h1p50, h1p99, h1p999, f3 = oha(results / f"{target}.h1-rate.json")
    h2, _, _, _, f4 = oha(results / f"{target}.h2-rps.json")
    _, h2p50, h2p99, h2p999, f5 = oha(results / f"{target}.h2-rate.json")
    rss = int((results / f"{target}.rss-kb").read_text().strip() or 0) / 1024
    rows[target] = dict(h1=h1, callers=callers, h1p50=h1p50, h1p99=h1p99, h1p999=h1p999, h2=h2,
                        h2p50=h2p50, h2p99=h2p99, h2p999=h2p999, rss=rss, failures=f1 + f2 + f3 + f4 + f5)

out = [f"{connections} keep-alive connections, {duration} s per measurement, fixed rate {rate}/s; "
       "proxy pinned to its own core; TLS on every hop",
       "",
       f"{'target':12} {'h1 req/s':>9} {'1000 callers':>12} {'h1 p50/p99/p99.9 ms @' + rate:>24} "
       f"{'h2 req/s':>9} {'h2 p50/p99/p99.9 ms @' + rate:>24} {'peak RSS':>9} {'failed':>7}"]
for target, r in rows.items():
    out.append(f"{target:12} {r['h1']:9.0f} {r['callers']:12.0f} "
               f"{r['h1p50']:8.2f}/{r['h1p99']:.2f}/{r['h1p999']:.2f}".ljust(0)
               + " " * 0
               + f"{'':>0} {r['h2']:9.0f} {r['h2p50']:8.2f}/{r['h2p99']:.2f}/{r['h2p999']:.2f} "
               f"{r['rss']:7.1f}MB {r['failures']:7d}")
out.append("")
for base in ("direct", "nginx", "haproxy-jwt"):
    if base not in rows:
        continue
    b = rows[base]
    for target, r in rows.items():
        if target == base:
            continue
        out.append(f"{target} / {base}: h1 {r['h1'] / b['h1']:.2f}x, 1000 callers {r['callers'] / b['callers']:.2f}x, "
                   f"h2 {r['h2'] / b['h2']:.2f}x, h1 p99 {r['h1p99'] - b['h1p99']:+.2f} ms, h2 p99 {r['h2p99'] - b['h2p99']:+.2f} ms")
gate = {name: (results / f"gate.{name}").read_text().strip()
        for name in ("ready-ms", "idle-rss-kb", "rss-1000-connections-kb") if (results / f"gate.{name}").exists()}
if gate:
    out.append("")
    out.append(f"gate: ready {gate.get('ready-ms', '?')} ms after start (keys from a local issuer), "
               f"idle RSS {int(gate.get('idle-rss-kb', 0)) / 1024:.1f} MB, "
               f"RSS with 1,000 open connections {int(gate.get('rss-1000-connections-kb', 0)) / 1024:.1f} MB")
print("\n".join(out))
