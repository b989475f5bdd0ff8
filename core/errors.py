"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """A runtime problem the user can fix (missing data, bad checkpoint...). Exit status 1."""


class UsageError(UserError):
    """A bad combination of options: exit status 2, like click's own usage errors."""

    exit_code = 2
