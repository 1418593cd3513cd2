"""The one exception type whose message is meant for the user, printed as a single line (and
:class:`FileFault`, the kind that blames a file rather than a plugin), :func:`plugin_errors`,
which turns a plugin's own exceptions into it, and the one-line forms of any other exception
(:func:`one_line`, :func:`named_error`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UebenchError(Exception):
    """A problem with the user's input or files; the CLI prints its message without a traceback."""


class FileFault(UebenchError):
    """A file that could not be read or written (disk full, read-only, not UTF-8, ...): the
    place's fault, never a plugin's, so no wrapper re-labels it as a plugin's failure."""


#: How long :func:`named_error`'s message may be: one line on a terminal (``--debug`` shows
#: the whole of it).
MESSAGE_LIMIT = 300


def one_line(error: BaseException) -> str:
    """An exception's message on one line (third-party messages may span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def named_error(error: BaseException) -> str:
    """``ValueError: its message`` on one line, the message cut to :data:`MESSAGE_LIMIT`."""
    message = " ".join(str(error).split()) or "no message"
    if len(message) > MESSAGE_LIMIT:
        message = message[: MESSAGE_LIMIT - 3] + "..."
    return f"{type(error).__name__}: {message}"


@contextlib.contextmanager
def plugin_errors(plugin: str, doing: str) -> Iterator[None]:
    """Re-raise any exception but a :class:`UebenchError` as one naming ``plugin`` and what it
    was ``doing`` (``method 'emin' failed while crafting: ValueError: ...``).

    The original stays the ``__cause__``, so ``uebench --debug`` (or ``UEBENCH_DEBUG=1``) can
    show its traceback; KeyboardInterrupt and SystemExit pass through untouched.
    """
    try:
        yield
    except UebenchError:
        raise
    except Exception as error:
        raise UebenchError(
            f"{plugin} failed while {doing}: {named_error(error)} "
            "(uebench --debug shows the traceback)"
        ) from error
