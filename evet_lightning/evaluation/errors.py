"""The exceptions the command line turns into one line on stderr and an exit code of its own.

- :class:`UsageError` (exit code 2): a mistake the user made and can fix, found before the long run.
- :class:`OutputError` (exit code 74, ``EX_IOERR``): a result could not be written in the middle of the run
  (a disk that is full or turned read-only); every file written before is intact.
- :class:`Interrupted` (exit code 130, like a shell's Ctrl+C): the run was interrupted; what finished is kept.
"""

from __future__ import annotations

__all__ = ["Interrupted", "OutputError", "UsageError"]


class UsageError(Exception):
    """A problem the user caused and can fix (bad path, name or option); the CLI prints it as one line."""


class OutputError(Exception):
    """A result that could not be written mid-run (``OSError``); the message names the file and the reason."""


class Interrupted(KeyboardInterrupt):
    """Ctrl+C (``KeyboardInterrupt``) during a run, with what was kept on disk (``kept``, one phrase)."""

    def __init__(self, kept: str) -> None:
        super().__init__(kept)
        self.kept = kept
