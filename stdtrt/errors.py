"""The one exception type a user sees as a single line (the CLI turns it into `error: ...`, exit 2).

Raise it for anything the user can fix: a bad path, a bad value, a model that is not there. The message
names the file or value and says what to do. Bugs stay ordinary exceptions with tracebacks.
"""


class StdtrtError(Exception):
    """A user-facing error: one clear line, non-zero exit."""
