"""`python -m stitch ...`: the `stitch` command line."""

import sys

from stitch.cli.main import main

sys.exit(main())
