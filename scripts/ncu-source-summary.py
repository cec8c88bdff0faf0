#!/usr/bin/env python3
"""Summarizes ncu's SASS source page (CSV, from scripts/ncu-source.sh): stall samples and
executed instructions by opcode, and the hottest lines. Usage: ncu-source-summary.py FILE.csv [N]"""
import csv, sys, collections

path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30
rows = list(csv.reader(open(path, errors="replace")))
# The header is the first row naming a "Source" column.
h = next(i for i, r in enumerate(rows) if any(c.strip('"') == "Source" for c in r))
head, body = rows[h], [r for r in rows[h + 1:] if len(r) == len(rows[h])]

def col(*names):
    for n in names:
        for i, c in enumerate(head):
            if n.lower() in c.lower():
                return i
    return None

src = col("Source")
samp = col("Warp Stall Sampling (All", "stall_sampling_all", "Sampling Data (All")
execd = col("Instructions Executed", "inst_executed")
num = lambda r, i: float(r[i].replace(",", "") or 0) if i is not None and r[i].strip() else 0.0
print(f"{len(body)} SASS lines; columns: samples={head[samp] if samp is not None else None}, executed={head[execd] if execd is not None else None}")
by_op = collections.defaultdict(lambda: [0.0, 0.0, 0])
for r in body:
    op = r[src].split()[0] if r[src].split() else "?"
    if op.startswith("@"):
        op = r[src].split()[1] if len(r[src].split()) > 1 else op
    op = op.split(".")[0]
    by_op[op][0] += num(r, samp); by_op[op][1] += num(r, execd); by_op[op][2] += 1
tot_s = sum(v[0] for v in by_op.values()) or 1; tot_e = sum(v[1] for v in by_op.values()) or 1
print(f"\nby opcode (stall samples %, executed %, lines):")
for op, (s, e, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]:
    print(f"  {op:12s} {100*s/tot_s:6.2f}% {100*e/tot_e:6.2f}% {n:5d}")
print(f"\nhottest lines (samples; the stall columns that carry them):")
stall_cols = [i for i, c in enumerate(head) if "stall" in c.lower() and i != samp]
for r in sorted(body, key=lambda r: -num(r, samp))[:top]:
    why = sorted(((num(r, i), head[i]) for i in stall_cols), reverse=True)[:3]
    print(f"  {num(r, samp):8.0f} {r[src][:70]:70s} " + ", ".join(f"{n.split('(')[0].strip()}={v:.0f}" for v, n in why if v > 0))
