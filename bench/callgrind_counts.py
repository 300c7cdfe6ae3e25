#!/usr/bin/env python3
"""Sum a callgrind profile (bench/cost.sh): total instructions and calls into the allocator, per request.

    callgrind_counts.py NAME N callgrind.out.PID...   -> one JSON line
"""
import json
import re
import sys

ALLOC = {"mi_malloc_aligned", "mi_zalloc_aligned", "mi_malloc", "mi_zalloc", "mi_calloc", "malloc", "calloc",
         "__libc_malloc", "__libc_calloc"}
REALLOC = {"mi_realloc_aligned", "mi_realloc", "realloc", "__libc_realloc"}


def counts(path):
    names = {}
    ir = 0
    allocs = reallocs = 0
    cfn = None
    summary = None
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                summary = int(line.split()[1])
                continue
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
            if m:
                fid, name = m.group(1), m.group(2)
                if name:
                    names[fid] = name.strip()
                if line.startswith("cfn="):
                    cfn = names.get(fid, "")
                continue
            if line.startswith("calls="):
                n = int(line.split("=")[1].split()[0])
                base = (cfn or "").split("'")[0]
                if base in ALLOC:
                    allocs += n
                elif base in REALLOC:
                    reallocs += n
                continue
    return summary or ir, allocs, reallocs


def main():
    name, n = sys.argv[1], int(sys.argv[2])
    ir = allocs = reallocs = 0
    for p in sys.argv[3:]:
        a, b, c = counts(p)
        ir += a
        allocs += b
        reallocs += c
    print(json.dumps({"target": name, "requests": n, "ir_per_request": ir / n, "allocs_per_request": allocs / n,
                      "reallocs_per_request": reallocs / n}))


if __name__ == "__main__":
    main()
