"""The one error type a user sees: a problem they can fix, printed as one line."""


class UserError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""
