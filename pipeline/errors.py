"""The one exception type for mistakes a user can make and fix."""


class AuditError(Exception):
    """A user error: bad path, wrong option, unusable model or data.

    The message says what is wrong and what to do; the CLI prints it on one line and exits with status 2.
    """


def quoted(value, limit: int = 80) -> str:
    """``repr`` of a value a user gave, shortened to about ``limit`` characters, for a message that quotes it."""
    text = repr(value if isinstance(value, str) else str(value))
    if len(text) <= limit:
        return text
    return f"{text[:limit - 1]}...' ({len(text) - 2:,} characters)"
