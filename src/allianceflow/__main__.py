"""Run the command-line interface: ``python -m allianceflow``."""

import sys

from .cli import main

sys.exit(main())
