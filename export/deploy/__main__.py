"""``python -m export.deploy [--check]``: write (or check) the kustomize tree under export/deploy/."""

from __future__ import annotations

import argparse
import sys

from export.deploy.tree import DEPLOY_DIR, stale, write

parser = argparse.ArgumentParser(prog="python -m export.deploy", description=__doc__)
parser.add_argument("--check", action="store_true", help="only report files that differ from the generated ones")
args = parser.parse_args()
if args.check:
    differ = stale()
    for rel in differ:
        print(f"stale: export/deploy/{rel}")
    sys.exit(1 if differ else 0)
for path in write():
    print(path.relative_to(DEPLOY_DIR.parent.parent))
