"""Run as ``python -m slimsched``."""

import sys

from slimsched.cli import main

sys.exit(main())
