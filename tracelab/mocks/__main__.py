import sys

from tracelab.mocks import main

sys.exit(main())
