"""The launcher's restarts of tritonserver, by reason, handed to the restarted server's BLS.

The launcher (export/launcher/watchdog.py) puts the counts as JSON in the server's environment; the
BLS publishes them as ``adaptive_launcher_restarts{reason}`` (bll_python/metrics.py), so they are
scraped from Triton's metrics port with everything else. No imports: the launcher reads it too.
"""

from __future__ import annotations

import json
from typing import Mapping

RESTARTS_ENV = "ADS_LAUNCHER_RESTARTS"
# Reasons whose series exist from the first start (zeros); a rarer signal's name appears when seen.
RESTART_REASONS = ("stub_died", "SIGSEGV", "SIGABRT", "SIGKILL", "exit_status")


def launcher_restarts(environ: Mapping[str, str]) -> dict[str, int]:
    """Restart counts by reason from ``environ`` (zeros for the known reasons when absent or unreadable)."""
    counts = {r: 0 for r in RESTART_REASONS}
    try:
        given = json.loads(environ.get(RESTARTS_ENV, "{}"))
    except ValueError:
        return counts
    if isinstance(given, dict):
        # Bounded labels: short words, a few of them (the launcher writes signal names and the reasons above).
        counts.update({str(k)[:32]: v for k, v in list(given.items())[:32] if isinstance(v, int) and not isinstance(v, bool)})
    return counts


def restarts_env(counts: Mapping[str, int]) -> dict[str, str]:
    """The environment entry that tells a (re)started server its restart counts."""
    return {RESTARTS_ENV: json.dumps({**{r: 0 for r in RESTART_REASONS}, **counts}, sort_keys=True)}
