"""The one exception type for problems the user can fix (bad input, missing files, options)."""


class QtoolError(Exception):
    """A user-facing error: its message names the problem and the fix, on one line."""
