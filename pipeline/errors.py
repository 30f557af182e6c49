"""The error a user can fix: raised anywhere, reported by the step runner as one `error:` line."""


class UserError(Exception):
    """A mistake the user can fix (bad parameter, missing folder): reported, never a traceback."""
