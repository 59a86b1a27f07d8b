"""The one exception type for user mistakes.

Stage entry points catch it and print its message as one line on stderr; anything else is a bug
and keeps its stack trace.
"""


class UserError(Exception):
    """A mistake the user can fix: a bad parameter, a missing folder, unusable data."""
