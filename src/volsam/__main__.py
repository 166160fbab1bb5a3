"""``python -m volsam``."""

import sys

from volsam.cli import main

sys.exit(main())
