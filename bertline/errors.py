"""One exception type for mistakes a user can cause, and a way to find it again after a runner wrapped it."""

from __future__ import annotations

import re
import sys
from typing import Callable


class UserError(Exception):
    """A bad input, path or setting, described in one sentence that names the thing and the fix.

    Raised anywhere (driver or Beam worker); the command line prints the sentence alone, no traceback.
    """

    exit_code = 2


class TrainingDiverged(UserError):
    """The loss stopped being a number (or fp16 scaling gave up): the run stops, its last good checkpoint stays."""

    exit_code = 3


# Runners re-raise worker exceptions as their own type with the original text inside (FnApiRunner keeps
# "UserError: <sentence> [while running '...']"); this pattern recovers the sentence from that text.
_WRAPPED = re.compile(r"UserError: (.+)$", re.MULTILINE)
_STEP_SUFFIX = re.compile(r"(?: \[while running '[^']*'\])+$")


def find_user_error(exc: BaseException) -> str | None:
    """The sentence of the UserError behind `exc`, whether raised here or wrapped by a Beam runner."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UserError):
            # Beam re-raises the worker's exception with " [while running '<step>']" appended.
            return _STEP_SUFFIX.sub("", str(current)).strip()
        match = _WRAPPED.search(str(current))
        if match:
            return _STEP_SUFFIX.sub("", match.group(1)).strip()
        current = current.__cause__ or current.__context__
    return None


def run_command(prog: str, call: Callable[[], int]) -> int:
    """Run a command's body; a UserError, even one a Beam runner wrapped, becomes `prog: error: <sentence>`
    on stderr and the error's exit code, with no traceback. Anything else is a bug and keeps its traceback."""
    try:
        return call()
    except Exception as exc:
        sentence = find_user_error(exc)
        if sentence is None:
            raise
        print(f"{prog}: error: {sentence}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, UserError) else UserError.exit_code
