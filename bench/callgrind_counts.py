#!/usr/bin/env python3
"""Sum a callgrind profile (bench/cost.sh): total instructions and calls into the allocator, per request.

Also the instructions of SHA-256's portable block function (`sha2::sha256::compress256`, self cost).
Valgrind's CPU hides the SHA extensions from `cpuid`, so under callgrind the `sha2` crate takes its
portable path; run natively on a CPU with SHA-NI (this machine's: `grep sha_ni /proc/cpuinfo`) the same
hashing is a small fraction of that. The column says how much of a count is this artefact.

    callgrind_counts.py NAME N callgrind.out.PID...   -> one JSON line
"""
import json
import re
import sys

ALLOC = {"mi_malloc_aligned", "mi_zalloc_aligned", "mi_malloc", "mi_zalloc", "mi_calloc", "malloc", "calloc",
         "__libc_malloc", "__libc_calloc"}
REALLOC = {"mi_realloc_aligned", "mi_realloc", "realloc", "__libc_realloc"}
SHA256_PORTABLE = "sha2::sha256::compress256"


def counts(path):
    names = {}
    ir = 0
    allocs = reallocs = 0
    cfn = None
    fn = ""
    after_call = False
    sha = 0
    summary = None
    with open(path, errors="replace") as f:
        for line in f:
            # Cost lines: self cost of the current function, except the one right after `calls=` (the
            # call's inclusive cost).
            if line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                elif fn.startswith(SHA256_PORTABLE):
                    parts = line.split()
                    if len(parts) >= 2:
                        sha += int(parts[1])
                continue
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
                else:
                    fn = names.get(fid, "")
                continue
            if line.startswith("calls="):
                after_call = True
                n = int(line.split("=")[1].split()[0])
                base = (cfn or "").split("'")[0]
                if base in ALLOC:
                    allocs += n
                elif base in REALLOC:
                    reallocs += n
                continue
    return summary or ir, allocs, reallocs, sha


def main():
    name, n = sys.argv[1], int(sys.argv[2])
    ir = allocs = reallocs = sha = 0
    for p in sys.argv[3:]:
        a, b, c, d = counts(p)
        ir += a
        allocs += b
        reallocs += c
        sha += d
    print(json.dumps({"target": name, "requests": n, "ir_per_request": ir / n, "allocs_per_request": allocs / n,
                      "reallocs_per_request": reallocs / n, "sha256_portable_ir_per_request": sha / n}))


if __name__ == "__main__":
    main()
