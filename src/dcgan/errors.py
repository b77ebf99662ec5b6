"""The one exception type for mistakes a user can fix (bad data, config or environment)."""


class UserError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits non-zero."""
