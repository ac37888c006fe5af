#!/usr/bin/env python3
"""Read a py-spy flame graph (SVG) back as numbers.

    .venv/bin/python bench/flamestat.py docs/benchmarks/profiles/FILE.svg [--top 25] [--match TEXT]

Prints, per thread (py-spy ``--threads``), its share of all samples and
its functions ranked by *self* samples (the frame was on top of the stack)
and by *inclusive* samples (anywhere on the stack; a function counted once
per stack even when it recurses). ``--match`` keeps only functions whose
name or file contains TEXT. It reads the frames from the ``fg:x``/``fg:w``
attributes (samples) and the ``y`` position (depth) of each ``<rect>``.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field

_FRAME = re.compile(r'<g><title>(.*?) \(([\d,]+) samples?, [\d.]+%\)</title><rect [^>]*?y="(\d+(?:\.\d+)?)"'
                    r'[^>]*?fg:x="(\d+)" fg:w="(\d+)"')


@dataclass
class Node:
    name: str
    depth: float
    x: int
    w: int
    children: list["Node"] = field(default_factory=list)
    parent: "Node | None" = None


def load(path: str) -> list[Node]:
    text = open(path, encoding="utf-8").read()
    nodes = [Node(html.unescape(m.group(1)), float(m.group(3)), int(m.group(4)), int(m.group(5)))
             for m in _FRAME.finditer(text)]
    if not nodes:
        raise SystemExit(f"{path}: no frames found (is it a py-spy flame graph?)")
    # py-spy draws the root at the top: depth grows with y.
    by_depth: dict[float, list[Node]] = defaultdict(list)
    for n in nodes:
        by_depth[n.depth].append(n)
    depths = sorted(by_depth)
    for upper, lower in zip(depths, depths[1:]):
        parents = sorted(by_depth[upper], key=lambda n: n.x)
        for child in by_depth[lower]:
            for p in parents:
                if p.x <= child.x < p.x + p.w:
                    child.parent = p
                    p.children.append(child)
                    break
    return [n for n in nodes if n.parent is None]


def short(name: str) -> str:
    return re.sub(r"\(/[^)]*?site-packages/", "(", name)


def walk(node: Node, stack: tuple[str, ...], selfs: dict[str, int], incl: dict[str, int]) -> None:
    key = re.sub(r":\d+\)$", ")", short(node.name))  # one row per function, not per line
    if key not in stack:
        incl[key] += node.w
    selfs[key] += node.w - sum(c.w for c in node.children)
    for c in node.children:
        walk(c, stack + (key,), selfs, incl)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("svg")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", default="")
    a = p.parse_args(argv)
    roots = load(a.svg)
    total = sum(r.w for r in roots)
    # With --threads the first level below "all" is one node per thread.
    threads = [c for r in roots for c in (r.children or [r])] if len(roots) == 1 else roots
    print(f"{a.svg}: {total} samples")
    for t in sorted(threads, key=lambda n: -n.w):
        selfs: dict[str, int] = defaultdict(int)
        incl: dict[str, int] = defaultdict(int)
        for c in t.children:
            walk(c, (), selfs, incl)
        print(f"\n== {t.name}: {t.w} samples ({100 * t.w / total:.1f}% of all)")
        for title, table in (("self", selfs), ("inclusive", incl)):
            print(f"  -- by {title} samples (% of this thread)")
            rows = [(k, v) for k, v in table.items() if a.match.lower() in k.lower()]
            for k, v in sorted(rows, key=lambda kv: -kv[1])[:a.top]:
                print(f"  {100 * v / max(1, t.w):5.1f}%  {v:6d}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
