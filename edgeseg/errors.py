"""The one exception type for user mistakes.

The CLI catches :class:`EdgesegError`, prints its message on one line and exits 1
without a traceback (set ``EDGESEG_DEBUG=1`` to see it). Messages name the file,
what is wrong, and what to do about it.
"""

from __future__ import annotations


class EdgesegError(Exception):
    """A mistake the user can fix: bad input, a missing file, an impossible option."""


class Interrupted(Exception):
    """Ctrl-C, after the library cleaned up: the message says what was finished and how to resume.

    The CLI prints it on one line and exits 130, the shell's code for SIGINT.
    """
