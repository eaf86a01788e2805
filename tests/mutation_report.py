"""Summarise a finished ``mutmut run`` (``make mutate``): the score and the surviving mutants.

mutmut 3 keeps one ``<file>.py.meta`` JSON per mutated source file under ``mutants/``, with the
exit code of the tests for each mutant; this reads those rather than mutmut's interactive UI.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

def collect(root: Path = Path("mutants")) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    statuses = {}
    for meta in sorted(root.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        for name, code in data.get("exit_code_by_key", {}).items():
            statuses[name] = status_by_exit_code[code]
    return statuses


def main() -> int:
    statuses = collect()
    if not statuses:
        print("no mutmut results under mutants/: run `make mutate`", file=sys.stderr)
        return 1
    counts = Counter(statuses.values())
    decided = counts["killed"] + counts["survived"] + counts["timeout"] + counts["no tests"]
    killed = counts["killed"] + counts["timeout"]
    print(f"mutants: {len(statuses)}  " + "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    print(f"mutation score: {killed}/{decided} = {killed / max(decided, 1):.1%} (killed or timed out / checked; 'no tests' counts as surviving)")
    for name, status in sorted(statuses.items()):
        if status in ("survived", "no tests"):
            print(f"  {status:9} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
