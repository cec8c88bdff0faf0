#!/usr/bin/env python3
"""Reads cargo's --message-format=json on stdin; prints `NAME PATH` for each executable it
built (the bundle scripts copy them: scripts/gpu-bundle.sh, scripts/gpu-bundle-candle.sh)."""
import json
import sys

for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])
