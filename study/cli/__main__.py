"""``python -m study.cli``: the same command as ``study``."""

import sys

from study.cli.main import main

sys.exit(main())
