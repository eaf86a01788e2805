import sys

from export.world.cli import main

sys.exit(main())
