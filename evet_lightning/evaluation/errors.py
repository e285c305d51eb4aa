"""The one exception the command line turns into one line on stderr and exit code 2."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A problem the user caused and can fix (bad path, name or option); the CLI prints it as one line."""
