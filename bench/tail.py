#!/usr/bin/env python3
"""The tail at one connection, from `tollgate-bench latency --samples FILE` (bench/tail.sh runs it).

For each target: a latency histogram (log buckets), p50/p90/p99/p99.9, p99/p50, and the slow requests'
timeline: how far apart requests slower than 2x the target's p50 are, so a periodic stall (a batch every
few milliseconds, a poll every second) shows as a peak in the spacing.

    bench/tail.py samples.txt [samples-after.txt]      # one file, or before and after side by side
"""
import collections
import math
import sys


def load(path):
    per = collections.defaultdict(list)  # target -> [(run, at_ns, total_ns, first_ns)]
    for line in open(path):
        parts = line.split()
        if len(parts) != 5:
            continue
        run, target, at, total, first = parts
        per[target].append((int(run), int(at), int(total), int(first)))
    return per


def pct(sorted_us, p):
    if not sorted_us:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_us)))
    return sorted_us[min(rank, len(sorted_us)) - 1]


BUCKETS = [25, 50, 75, 100, 125, 150, 200, 250, 300, 400, 500, 750, 1000, 1500, 2000, 5000, 10000, 1e12]


def histogram(us):
    counts = [0] * len(BUCKETS)
    for x in us:
        for i, b in enumerate(BUCKETS):
            if x <= b:
                counts[i] += 1
                break
    return counts


def spacing(rows, slow_us):
    """Gaps (ms) between consecutive slow requests within a run, bucketed."""
    gaps = collections.Counter()
    by_run = collections.defaultdict(list)
    for run, at, total, _ in rows:
        if total / 1000 > slow_us:
            by_run[run].append(at)
    for ats in by_run.values():
        ats.sort()
        for a, b in zip(ats, ats[1:]):
            ms = (b - a) / 1e6
            key = next(k for k in (0.5, 1, 2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 50, 100, 500, 1000, 1e9) if ms <= k)
            gaps[key] += 1
    return gaps


def report(path, which="total"):
    per = load(path)
    idx = 2 if which == "total" else 3
    out = {}
    print(f"## {path} ({which})")
    for target, rows in per.items():
        us = sorted(r[idx] / 1000 for r in rows)
        p50, p90, p99, p999 = (pct(us, p) for p in (50, 90, 99, 99.9))
        out[target] = (p50, p99)
        print(f"\n{target}: n={len(us)} p50={p50:.1f} p90={p90:.1f} p99={p99:.1f} p99.9={p999:.1f} µs  "
              f"p99/p50={p99 / p50 if p50 else 0:.2f}")
        counts = histogram(us)
        lo = 0
        for b, c in zip(BUCKETS, counts):
            if c:
                label = f"{lo:g}–{b:g}" if b < 1e12 else f">{lo:g}"
                bar = "#" * max(1, round(60 * c / len(us))) if c else ""
                print(f"  {label:>12} µs {c:>8} {100 * c / len(us):6.2f}% {bar}")
            lo = b
        gaps = spacing(rows, 2 * p50)
        if gaps:
            total = sum(gaps.values())
            print(f"  spacing of requests slower than 2×p50 ({2 * p50:.0f} µs), {total + len(set(r[0] for r in rows))} of them:")
            for k in sorted(gaps):
                print(f"    ≤{k:g} ms: {gaps[k]} ({100 * gaps[k] / total:.1f}%)")
    return out


if __name__ == "__main__":
    which = "total"
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--first-byte" in sys.argv:
        which = "first"
    for p in args:
        report(p, which)
        print()
