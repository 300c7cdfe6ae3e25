#!/usr/bin/env python3
"""Turn the JSON results of bench/run.sh into a Markdown summary (stdout)."""
import glob
import json
import os
import platform
import statistics
import subprocess
import sys

out = sys.argv[1]
idle_fresh = sys.argv[2] if len(sys.argv) > 2 else "?"


def load(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def lines(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]


def fmt(s):
    return f"{s['median']:.1f} [{s['min']:.1f}–{s['max']:.1f}]"


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        return "?"


print("## Results", sh("date -u +%Y-%m-%dT%H:%MZ"))
print()
cpu = sh("lscpu | sed -n 's/^Model name: *//p'")
loadavg = open("/proc/loadavg").read().split()[:3]
print(f"Machine: {cpu}, {os.cpu_count()} vCPU, kernel {platform.release()}, load average at the end {' '.join(loadavg)}.")
print()
print("Latency in µs: median over runs [min–max over runs]; \"added\" = target minus direct, computed per run.")
print()
print("| case | target | p50 | p99 | added p50 | added p99 |")
print("|---|---|---|---|---|---|")
for f in sorted(glob.glob(os.path.join(out, "latency-*.json"))):
    with open(f) as fh:
        r = json.load(fh)
    for t in r["summary"]:
        metrics = ["total", "first_byte"] if r["stream"] else ["total"]
        for m in metrics:
            if m not in t:
                continue
            s = t[m]
            case = r["label"] + (" (first byte)" if m == "first_byte" else "")
            print(f"| {case} | {t['target']} | {fmt(s['p50_us'])} | {fmt(s['p99_us'])} | {fmt(s['added_p50_us'])} | {fmt(s['added_p99_us'])} |")
print()

tp = lines("throughput.jsonl")
if tp:
    print("Throughput (wrk, 1 thread, fixed connections), requests/s per run, median:")
    print()
    print("| target | connections | runs (req/s) | median | errors |")
    print("|---|---|---|---|---|")
    keys = sorted({(x["target"], x["connections"]) for x in tp}, key=lambda k: (k[1], k[0]))
    for k in keys:
        rs = [x["result"] for x in tp if (x["target"], x["connections"]) == k]
        rps = [r["rps"] for r in rs]
        errs = sum(v for r in rs for name, v in r.items() if name.startswith("errors_"))
        print(f"| {k[0]} | {k[1]} | {', '.join(f'{x:.0f}' for x in rps)} | {statistics.median(rps):.0f} | {errs} |")
    print()

mem = load("memory.json")
st = load("streams.json")
if mem or st:
    print("Memory of the broker (VmRSS):")
    print()
    if mem:
        print(f"- idle after start: {int(mem['idle_fresh_kb'])/1024:.1f} MB; idle after the load above: {int(mem['idle_after_load_kb'])/1024:.1f} MB")
    if st:
        print(f"- {st['open_ok']}/{st['n']} streams open: {st['all_open']['rss_kb']/1024:.1f} MB at open, {st['after_settle']['rss_kb']/1024:.1f} MB settled, {st['all_open']['fds']} fds")
    if mem:
        print(f"- after the streams closed: {int(mem['after_streams_closed_kb'])/1024:.1f} MB, {mem['fds_after']} fds")
    print()

peers = load("peers.json")
if peers:
    for name, key, ver in (("LiteLLM", "litellm_rss_kb", "litellm_version"), ("Portkey's gateway", "portkey_rss_kb", "portkey_version")):
        if peers.get(key):
            print(f"- {name} {peers[ver]}: RSS {peers[key]/1024:.0f} MB after its runs.")
    print()

# Ratios within one run (the side-by-side and the targets of issue #19): each from the same interleaved run.
def summary_of(label):
    r = load(f"latency-{label}.json")
    return {t["target"]: t for t in r["summary"]} if r else {}

for label in ("responses", "chat", "responses-stream", "peers-responses", "peers-chat", "peers-chat-stream"):
    t = summary_of(label)
    if "tollgate" not in t:
        continue
    m = "first_byte" if label.endswith("stream") else "total"
    tg = t["tollgate"][m]
    parts = [f"tollgate p99/p50 {tg['p99_us']['median'] / tg['p50_us']['median']:.2f}"]
    for floor in ("floor", "hyperfloor"):
        if floor in t:
            parts.append(f"tollgate − {floor} p50 {tg['p50_us']['median'] - t[floor][m]['p50_us']['median']:+.1f} µs")
    for peer in ("litellm", "portkey"):
        if peer in t and tg["added_p50_us"]["median"] > 0:
            parts.append(f"{peer} adds {t[peer][m]['added_p50_us']['median']:.0f} µs = "
                         f"{t[peer][m]['added_p50_us']['median'] / tg['added_p50_us']['median']:.1f}× Tollgate's")
    print(f"- {label} ({m.replace('_', ' ')}): " + "; ".join(parts))
print()
if tp:
    for c in (16, 64):
        med = {}
        for t in ("floor", "hyperfloor", "proxy"):
            rps = [x["result"]["rps"] for x in tp if x["target"] == t and x["connections"] == c]
            if rps:
                med[t] = statistics.median(rps)
        if "proxy" in med and "floor" in med:
            extra = f", {100 * med['proxy'] / med['hyperfloor']:.0f}% of the hyper floor" if "hyperfloor" in med else ""
            print(f"- {c} connections: Tollgate (governance on) {med['proxy']:.0f} req/s = {100 * med['proxy'] / med['floor']:.0f}% of the axum+reqwest floor{extra}")
    print()

mint = lines("mint.jsonl")
if mint:
    rps = [m["result"]["rps"] for m in mint]
    errs = sum(m["result"]["errors_status"] for m in mint)
    print(f"Mint throughput (POST /oauth/token, static credential, ES256 JWT): runs {', '.join(f'{x:.0f}' for x in rps)} tokens/s, median {statistics.median(rps):.0f}, non-2xx {errs}.")
    print()

for name, label in (("helper-warm.json", "helper warm (cached token)"), ("helper-cold.json", "helper cold (mint each run)")):
    h = load(name)
    if h:
        r = h["results"][0]
        print(f"- {label}: median {r['median']*1000:.2f} ms, mean {r['mean']*1000:.2f} ± {r['stddev']*1000:.2f} ms, min {r['min']*1000:.2f} ms, max {r['max']*1000:.2f} ms ({len(r['times'])} runs)")
print()
