"""Mock Stripe: the Docker entry point of `mock-stripe`.

The app itself lives in the package, `tracelab/mocks/stripe.py` (so `pip install tracelab` users
get it through `tracelab mocks`); this file only runs it:

    python mocks/stripe/app.py [--host H] [--port P]   # default $MOCK_HOST/$MOCK_PORT, else 127.0.0.1:9100
    uvicorn app:app                                 # also works (`reset` faults then close the
                                                    # connection mid-response instead of a TCP RST)

Fault rules: `MOCK_FAULTS` at start, `/__tracelab/faults` at run time (see `tracelab.replay.faults`).
"""
import sys

from tracelab.mocks import main

if __name__ == "__main__":
    sys.exit(main(["stripe", *sys.argv[1:]]))
else:
    from tracelab.mocks.stripe import create_app

    app = create_app()
