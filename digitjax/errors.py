"""Errors a user can cause and fix, shown as one paragraph instead of a traceback."""

import contextlib
import sys
import textwrap


class UserError(Exception):
    """Something the user can fix: the message says what happened and what to do."""


@contextlib.contextmanager
def exit_on_user_error():
    """Prints a UserError as a short paragraph on stderr and exits with status 2."""
    try:
        yield
    except UserError as e:
        print(textwrap.fill(f"error: {e}", width=100, break_long_words=False, break_on_hyphens=False), file=sys.stderr)
        sys.exit(2)
