"""`python -m stitch.cli ...` (and `torchrun -m stitch.cli train ...`)."""

import sys

from stitch.cli.main import main

sys.exit(main())
