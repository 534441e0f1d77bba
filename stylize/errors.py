"""The one exception type for expected failures.

Library code raises `StylizeError` for anything a user can cause and fix (a missing file, a
corrupt model, a bad option value).  The message is one line that names the thing at fault and
says what to do.  The CLI prints it in red and exits 1; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class StylizeError(Exception):
    """An expected failure, with a message meant for the user."""
