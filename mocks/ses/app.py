"""Mock Amazon SES: the Docker entry point of `mock-ses`.

The app itself lives in the package, `tracelab/mocks/ses.py` (so `pip install tracelab` users
get it through `tracelab mocks`); this file only runs it:

    python mocks/ses/app.py [--host H] [--port P]   # default $MOCK_HOST/$MOCK_PORT, else 127.0.0.1:9103
    uvicorn app:app                                 # also works (`reset` faults then close the
                                                    # connection mid-response instead of a TCP RST)

Fault rules: `MOCK_FAULTS` at start, `/__tracelab/faults` at run time (see `tracelab.replay.faults`).
"""
import sys

from tracelab.mocks import main

if __name__ == "__main__":
    sys.exit(main(["ses", *sys.argv[1:]]))
else:
    from tracelab.mocks.ses import create_app

    app = create_app()
