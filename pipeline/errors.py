"""The one exception type for mistakes a user can make and fix."""


class AuditError(Exception):
    """A user error: bad path, wrong option, unusable model or data.

    The message says what is wrong and what to do; the CLI prints it on one line and exits with status 2.
    """
