"""`tracelab check [PATH...] [--junit FILE] [-k NAME] [--update [--against-mocks]]`.

Runs every case of the replay specs under PATH (a spec file, or every .yaml/.yml under a
folder, hidden folders skipped; default ./tracelab.yaml) as a replay and judges it against
its expectations (`tracelab.replay.spec` documents the format). Prints one line per case and
each failed expectation with its evidence, then one verdict line; `--junit FILE` writes JUnit
XML; under GitHub Actions (GITHUB_ACTIONS=true) it also prints `::error` annotations and
appends a Markdown table to $GITHUB_STEP_SUMMARY.

Exit status: 0 every case passed, 1 an expectation failed, 2 a spec, recording or command is
invalid (or a bad flag). All of it comes from one `Verdict` (`tracelab.replay.check`).

`--update` re-records each selected case's recording by running its command live (embedded
mode, in a temporary TRACELAB_HOME), judges the cases against the new recording and writes it
only when they all pass; `--against-mocks` runs the command against `tracelab mocks` (started
here on ports 9100-9104, or from `--mocks-base-port`, passed as MOCK_<VENDOR>_URL).
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from tracelab.listen import port_number
from tracelab.mocks import DEFAULT_BASE_PORT

if TYPE_CHECKING:
    from tracelab.replay.check import CaseResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="spec files or folders of them (default: ./tracelab.yaml)")
    parser.add_argument("--junit", metavar="FILE", help="write JUnit XML here")
    parser.add_argument("-k", dest="name", metavar="NAME",
                        help="only the cases whose name contains NAME (case-insensitive)")
    parser.add_argument("--update", action="store_true",
                        help="re-record the selected cases' recordings by running their "
                             "commands live; a run that fails its expectations is not kept")
    parser.add_argument("--against-mocks", action="store_true",
                        help="with --update: run the commands against `tracelab mocks` "
                             "(MOCK_<VENDOR>_URL set)")
    parser.add_argument("--mocks-base-port", type=port_number, default=DEFAULT_BASE_PORT,
                        metavar="PORT",
                        help=f"with --against-mocks: the first mock's port (default "
                             f"{DEFAULT_BASE_PORT}: stripe, +1 sendgrid, +2 twilio, +3 ses, "
                             "+4 openai)")


def run(args: argparse.Namespace) -> int:
    from tracelab.replay.check import EXIT_INVALID, SetupError, case_lines, check, update_cases
    from tracelab.replay.junit import github_output, write_junit

    if args.mocks_base_port == 0:
        print("tracelab check: --mocks-base-port needs fixed ports (the recording keeps them)",
              file=sys.stderr)
        return EXIT_INVALID
    if args.against_mocks and not args.update:
        print("tracelab check: --against-mocks only goes with --update (a replay needs no "
              "mocks)", file=sys.stderr)
        return EXIT_INVALID
    def show(result: CaseResult) -> None:
        print("\n".join(case_lines(result)), flush=True)

    try:
        if args.update:
            base = args.mocks_base_port if args.against_mocks else None
            verdict = update_cases(args.paths, args.name, mocks_base_port=base, on_result=show)
        else:
            verdict = check(args.paths, args.name, on_result=show)
    except SetupError as exc:
        print(f"tracelab check: {exc}", file=sys.stderr)
        return EXIT_INVALID
    for line in [*verdict.error_lines(), verdict.headline]:
        print(line, flush=True)
    for line in github_output(verdict):
        print(line, flush=True)
    if args.junit:
        try:
            write_junit(verdict, args.junit)
        except OSError as exc:
            print(f"tracelab check: cannot write {args.junit}: {exc.strerror or exc}",
                  file=sys.stderr)
            return EXIT_INVALID
    return verdict.exit_code
