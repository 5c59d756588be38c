"""Record & replay: re-run a command with its outbound calls answered from a recording.

`with tracelab.replay("run.jsonl") as r:` answers the calls made inside from the recording
(see `tracelab.replay.engine.replay`); the module itself is callable for that reason.
"""
from __future__ import annotations

import sys
import types
from typing import Any

from tracelab.replay.engine import Replay, replay
from tracelab.replay.matching import Matcher, MatchOptions
from tracelab.replay.recording import Recording, RecordingError, load_recording

__all__ = ["MatchOptions", "Matcher", "Recording", "RecordingError", "Replay", "load_recording",
           "replay"]


class _CallableModule(types.ModuleType):
    """`tracelab.replay(...)` is `tracelab.replay.replay(...)`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Replay:
        return replay(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
