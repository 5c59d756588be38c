"""The `tracelab` command line: one sub-command per job, each living in the module that owns it.

Commands are registered by dotted path. Each command module keeps its top-level imports light
(heavy libraries are imported inside `run`), so building the parser for `tracelab --help`
stays fast and a missing optional extra only breaks the command that needs it, with the
install command instead of a traceback (`tracelab.cli.extras`).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tracelab import __version__

# name -> (module, one-line help). Each module provides `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("tracelab.cli.validate", "check TraceEvent JSON files against the contract"),
    "scan": ("tracelab.cli.scan", "find secrets left in files of events before committing them"),
    "ingest": ("tracelab.cli.ingest", "consume the Redis stream into the Parquet store"),
    "compact": ("tracelab.cli.compact", "merge the store's small files, keeping exactly-once"),
    "retain": ("tracelab.cli.retain", "delete executions older than a limit (--older-than 30d)"),
    "stats": ("tracelab.cli.stats", "print workflows, executions, events, files and bytes"),
    "serve": ("tracelab.cli.serve", "serve the API (:8000, /docs) and the web UI (:3000)"),
    "up": ("tracelab.cli.up", "service mode: the ingester and `serve` in one process"),
    "proxy": ("tracelab.cli.proxy", "record HTTP(S)/WebSocket traffic as a mitmproxy proxy"),
    "mocks": ("tracelab.cli.mocks", "run the mock vendors (Stripe, SendGrid, Twilio, SES, OpenAI)"),
    "export": ("tracelab.cli.export", "write a stored run as a recording (JSON Lines of events)"),
    "import": ("tracelab.cli.import_", "load recordings into the store, each event once"),
    "replay": ("tracelab.cli.replay", "run a command again, its calls answered from a recording"),
    "check": ("tracelab.cli.check", "run replay specs in CI: one verdict, JUnit, exit 0/1/2"),
    "demo": ("tracelab.cli.demo", "record the sample refund agent against the mocks, then serve"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracelab",
        description="Record, inspect and replay what an AI agent does to the outside world.",
    )
    parser.add_argument("--version", action="version", version=f"tracelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:  # imported only on failure: the store module loads pyarrow
        from tracelab.store.objectstore import ObjectStoreError

        if not isinstance(exc, ObjectStoreError):
            raise
        print(f"tracelab {args.command}: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        from tracelab.cli.extras import missing_extra_message

        message = missing_extra_message(args.command, exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
