import sys

from export.gateway.cli import main

sys.exit(main())
