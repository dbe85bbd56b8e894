"""The one exception type for user mistakes, and one way to say what went wrong.

The CLI catches :class:`EdgesegError`, prints its message on one line and exits 1
without a traceback (set ``EDGESEG_DEBUG=1`` to see it). Messages name the file,
what is wrong, and what to do about it. :func:`describe` turns any other exception
(from onnxruntime, pydicom, nibabel, ...) into the short text those messages quote.
"""

from __future__ import annotations


class EdgesegError(Exception):
    """A mistake the user can fix: bad input, a missing file, an impossible option."""


class DiskFull(EdgesegError):
    """A write of ``path`` failed because the disk (or the user's quota) is full: ``why`` says which.

    Not worth retrying for the next file: a loop over many outputs stops at the first one.
    """

    def __init__(self, path: object, why: str) -> None:
        super().__init__(f"{path}: cannot write it, {why}; free some space or write somewhere else")
        self.path, self.why = path, why


class Interrupted(Exception):
    """Ctrl-C or SIGTERM, after the library cleaned up: the message says what was finished and how to resume.

    The CLI prints it on one line and exits ``code``: 130 (SIGINT) or 143 (SIGTERM), the shell's codes.
    """

    def __init__(self, message: str, code: int = 130) -> None:
        super().__init__(message)
        self.code = code


def describe(exc: BaseException, limit: int = 200, typed: bool = False) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters, its type name if empty.

    ``typed`` prefixes the type (``"OSError: ..."``) where the message alone would not say what failed.
    """
    lines = str(exc).strip().splitlines()
    first = lines[0].strip()[:limit] if lines else ""
    if typed:
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first or type(exc).__name__
