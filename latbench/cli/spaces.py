"""``latbench spaces``: the registered search spaces."""
from __future__ import annotations

import argparse
import json

from latbench.spaces import DEFAULT_SPACE, SPACES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spaces", help="list the search spaces (for --space)",
                       description="List the registered search spaces: the name --space takes, the number of "
                                   "architectures and what they are. The default is proxylessnas.")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, size, description, default}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = [{"name": s.name, "size": s.size, "description": s.description, "default": s.name == DEFAULT_SPACE}
            for s in SPACES.values()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    w = max(len(r["name"]) for r in rows) + 2
    for r in rows:
        print(f"{r['name'] + (' *' if r['default'] else ''):<{w + 2}}{r['size']:>10}  {r['description']}")
    return 0
