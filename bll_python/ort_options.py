"""ONNX Runtime session options shared by the served component models and the in-process engines.

Kept free of torch on purpose: every component's Python stub imports it, and torch would add
~200 MiB to each of them.
"""

from __future__ import annotations


def ort_session_options(threads: int = 0, allow_spinning: bool = False):
    """``threads=0`` is ORT's default. Spin-waiting pool threads keep a core busy after each run
    while the next stage (another process when served) needs it, so spinning is off unless asked."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return options
