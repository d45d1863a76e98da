"""The one exception type for mistakes a user can fix: the CLI prints it as one line and exits 2."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the command line, a config file or the data that the user can fix."""


def close_matches(word: str, choices: Iterable[str], limit: int = 3) -> list[str]:
    """Names among `choices` that look like `word`, best first."""
    return difflib.get_close_matches(word, list(choices), n=limit, cutoff=0.5)


def unknown_name(kind: str, name: str, choices: Iterable[str], hint: str = "") -> UserError:
    """A UserError for an unknown `kind` called `name`, suggesting the closest known names."""
    choices = sorted(choices)
    matches = close_matches(name, choices)
    suggestion = f"did you mean {', '.join(matches)}?" if matches else f"known: {', '.join(choices)}"
    message = f"unknown {kind} '{name}'; {suggestion}"
    return UserError(f"{message} ({hint})" if hint else message)


_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colours that a library put in its message


def first_line(text: str) -> str:
    """The first non-blank line of a (library's) error message, without terminal colour codes."""
    text = _TERMINAL_CODES.sub("", text)
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)]}


def for_terminal(text: str) -> str:
    """`text` with its control characters as `\\xNN`: a file name must not move the cursor or change the
    colours of the terminal that a log line reaches."""
    return text.translate(_CONTROLS)
