"""`python -m tracelab.cli …`: the same entry point as the `tracelab` script."""
import sys

from tracelab.cli import main

sys.exit(main())
