"""``python -m export.tensorrt``: see :mod:`export.tensorrt.cli`."""

from export.tensorrt.cli import main

raise SystemExit(main())
