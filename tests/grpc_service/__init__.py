"""The small gRPC service the gRPC tests run on loopback (greeter.proto, its generated code
committed, and `server.py`)."""
