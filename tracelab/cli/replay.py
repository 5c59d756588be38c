"""`tracelab replay`: run a command again, every outbound call answered from a recording.

`tracelab replay SOURCE [--on-miss fail|passthrough|record] [--speed S] [--match-ignore RULE]…
[--match-headers NAME]… [--faults FILE] [--workflow NAME] [--run-id ID] [-- CMD ARG…]`. SOURCE
is a run id or a recording file; CMD defaults to the command the recording was made with. The
work is `tracelab.replay.runner.run_replay`; this module only parses the flags.

`--faults FILE` injects the fault rules of FILE (YAML or JSON, `tracelab.replay.faults`) into
the replayed calls and prints the resilience report (what the command did about each fault)
before the summary line; a faulted call counts neither as a hit nor as a miss.

Exit status: 0 when the command exited 0 and no call missed the recording; the command's own
status when it failed; 1 for misses; 2 for bad input (a flag, the source, a fault rules file,
with every reason; no command to run).
The last line printed (stderr) is `replayed N/M calls, K misses, U unused recordings`.
"""
from __future__ import annotations

import argparse


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the speed must be >= 0 (0 answers at once)")
    return value


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--on-miss", choices=("fail", "passthrough", "record"), default="fail",
                        help="a call the recording does not hold: fail it (default; nothing "
                        "leaves the machine), or send it live and record it")
    parser.add_argument("--speed", type=_speed, default=0.0, metavar="S",
                        help="0 answers at once (default); 1 waits each recorded latency; "
                        "2 twice as fast")
    parser.add_argument("--match-ignore", action="append", default=[], metavar="RULE",
                        help="leave a part out of the match key: body:$.path, query:NAME or "
                        "header:NAME (repeatable)")
    parser.add_argument("--match-headers", action="append", default=[], metavar="NAME",
                        help="add this request header to the match key (repeatable)")
    parser.add_argument("--faults", metavar="FILE",
                        help="inject the fault rules of FILE (YAML or JSON) into the replayed "
                        "calls and print the resilience report")
    parser.add_argument("--workflow", help="workflow of the new run (default: the recording's)")
    parser.add_argument("--run-id", help="run id of the new run (default: a new one)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="a run id in the store, or a recording "
                        "file (JSON Lines of events, e.g. from `tracelab export`)")
    _options(parser)
    # REMAINDER keeps the command's own flags (`-- curl -sS ...`) away from ours; flags given
    # after SOURCE and before `--` land in it too and are parsed by `_split`.
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARG",
                        help="the command to run (default: the recorded command)")


def _split(args: argparse.Namespace) -> list[str]:
    """The command after `--`; our flags found before it are parsed into `args`."""
    rest = list(args.cmd)
    if "--" in rest:
        cut = rest.index("--")
        flags, cmd = rest[:cut], rest[cut + 1:]
    elif rest and rest[0].startswith("-"):
        flags, cmd = rest, []
    else:
        flags, cmd = [], rest
    if flags:
        late = argparse.ArgumentParser(prog="tracelab replay SOURCE", add_help=False)
        _options(late)
        late.parse_args(flags, namespace=args)
    return cmd


def run(args: argparse.Namespace) -> int:
    from tracelab.replay.runner import run_replay

    cmd = _split(args)
    result = run_replay(args.source, cmd or None, on_miss=args.on_miss, speed=args.speed,
                        ignore=tuple(args.match_ignore), headers=tuple(args.match_headers),
                        workflow=args.workflow, run_id=args.run_id, faults=args.faults)
    return result.exit_code
