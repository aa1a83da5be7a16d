"""One exception type for mistakes a user can cause, and a way to find it again after a runner wrapped it."""

from __future__ import annotations

import re


class UserError(Exception):
    """A bad input, path or setting, described in one sentence that names the thing and the fix.

    Raised anywhere (driver or Beam worker); the command line prints the sentence alone, no traceback.
    """


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
