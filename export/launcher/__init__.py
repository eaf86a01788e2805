"""The tritonserver launcher, one file per concern: the wheel's server and its stub environment
(``environment``), stale shared-memory cleanup (``shm``), the server flags as data (``config``), the
process (``process``) and its stub watchdog (``watchdog``), and the CLI (``cli``, ``python -m
export.launcher``). Outside this package only the tests import it; clients and benchmarks run the CLI
(``clients/server_process.py``)."""
