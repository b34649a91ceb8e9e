"""`python -m mlm`."""

import sys

from mlm.cli import main

sys.exit(main())
