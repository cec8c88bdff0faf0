#!/usr/bin/env python3
"""Checks that no module of the host crate imports one that imports it back (directly or
through others): the graph of `crate::<module>` paths each file names, at top-level module
granularity (`backend::cuda_paged` counts as its own module)."""
import re, sys, pathlib
root = pathlib.Path(__file__).resolve().parent.parent / "host" / "src"
mods = {}
for f in root.rglob("*.rs"):
    rel = f.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p not in ("mod", "lib")]
    name = "::".join(parts) or "lib"
    text = re.sub(r"//[^\n]*", "", f.read_text())
    # Test modules may use anything.
    text = text.split("#[cfg(test)]")[0]
    deps = set()
    for m in re.finditer(r"crate::((?:backend::)?\w+)", text):
        d = m.group(1)
        if d != name and d != "lib":
            deps.add(d)
    for m in re.finditer(r"\bsuper::(\w+)", text):
        if name.startswith("backend::"):
            deps.add("backend::" + m.group(1))
    mods[name] = deps
# Parents own their children (mod declarations): a child's import of its parent is a cycle
# only through another edge, so only named imports are edges.
state, stack, cycles = {}, [], []
def visit(n):
    state[n] = 1; stack.append(n)
    for d in sorted(mods.get(n, ())):
        if d not in mods: continue
        if state.get(d) == 1:
            cycles.append(stack[stack.index(d):] + [d])
        elif d not in state:
            visit(d)
    stack.pop(); state[n] = 2
for n in sorted(mods):
    if n not in state: visit(n)
for c in cycles:
    print("import cycle:", " -> ".join(c))
print(f"{len(mods)} modules, {len(cycles)} import cycles")
sys.exit(1 if cycles else 0)
