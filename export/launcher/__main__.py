"""``python -m export.launcher``: see :mod:`export.launcher.cli`."""

import sys

from export.launcher.cli import main

sys.exit(main())
