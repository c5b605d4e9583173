#!/usr/bin/env python3
"""Summarises one callgrind dump (bench/profile.sh): instructions per request, allocation calls
per request and the functions with the highest self cost. Standard library only.

  callgrind.py FILE REQUESTS TITLE

The dump must be written with --compress-strings=no and one event (Ir). Self cost is summed per
function name across files (inlined code of one function lands in several); allocation calls are
the call counts of every arc into malloc, calloc and realloc.
"""
import collections
import re
import sys

ALLOC = re.compile(r"^(malloc|calloc|realloc)$")


def parse(path: str):
    self_cost = collections.Counter()
    alloc_calls = 0
    fn = cfn = None
    calls = None  # the call count of the arc whose cost line comes next
    total = None
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("cfn="):
                cfn = line[4:].strip()
            elif line.startswith("calls="):
                calls = int(line[6:].split()[0])
            elif line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) < 2:
                    continue
                if calls is not None:
                    # An arc's line carries the callee's inclusive cost, not the caller's own.
                    if cfn and ALLOC.match(cfn):
                        alloc_calls += calls
                    calls = None
                else:
                    self_cost[fn] += int(parts[1])
    return self_cost, alloc_calls, total or sum(self_cost.values())


def short(name: str, width: int = 100) -> str:
    name = re.sub(r"<impl [^>]*>", "<impl>", name)
    return name if len(name) <= width else name[: width - 1] + "…"


def main() -> None:
    path, requests, title = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    self_cost, alloc_calls, total = parse(path)
    print(f"== {title}: {total / requests:,.0f} instructions and "
          f"{alloc_calls / requests:.2f} allocation calls per request ({requests:,} requests)")
    for name, cost in self_cost.most_common(15):
        print(f"{cost / requests:9,.0f} {100 * cost / total:5.1f} %  {short(name)}")


if __name__ == "__main__":
    main()
