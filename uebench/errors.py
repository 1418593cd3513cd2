"""The one exception type whose message is meant for the user, printed as a single line."""


class UebenchError(Exception):
    """A problem with the user's input or files; the CLI prints its message without a traceback."""
