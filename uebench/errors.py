"""The one exception type whose message is meant for the user, printed as a single line (and
:class:`FileFault`, the kind that blames a file rather than a plugin), and
:func:`plugin_errors`, which turns a plugin's own exceptions into it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UebenchError(Exception):
    """A problem with the user's input or files; the CLI prints its message without a traceback."""


class FileFault(UebenchError):
    """A file that could not be read or written (disk full, read-only, not UTF-8, ...): the
    place's fault, never a plugin's, so no wrapper re-labels it as a plugin's failure."""


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
        message = " ".join(str(error).split()) or "(no message)"
        if len(message) > 300:  # one line on a terminal; --debug has the whole of it
            message = message[:297] + "..."
        raise UebenchError(
            f"{plugin} failed while {doing}: {type(error).__name__}: {message} "
            "(uebench --debug shows the traceback)"
        ) from error
