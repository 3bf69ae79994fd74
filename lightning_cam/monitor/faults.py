"""One place for what goes wrong while explaining: report it once and carry on, or raise when strict.

A visualisation must never end a training run that did not ask for it (``strict=False``): a
failing method is reported once, with its traceback, and left out from then on; any other
failure (a batch that cannot be read, a writer, a whole check) is reported once per kind.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Faults"]


class Faults:
    """Reports failures once per kind, remembers failed methods, raises instead when ``strict``.

    Example::

        >>> faults = Faults(strict=False)
        >>> with faults.guard("writer PNGWriter"):
        ...     raise OSError("disk full")  # doctest: +SKIP
        >>> # warns once: "CAMMonitor: writer PNGWriter failed (OSError: disk full); training goes on."
    """

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.failed_methods: set[str] = set()
        self.errors: dict[str, str] = {}  # what failed -> its latest error, "Type: message"
        self.messages: list[str] = []  # each warning's first line, in order: for the loggers and the page
        self._warned: set[str] = set()

    def warn_once(self, key: str, message: str) -> None:
        """Warn with ``message`` the first time ``key`` comes up (and list its first line)."""
        if key not in self._warned:
            self._warned.add(key)
            self.messages.append(message.splitlines()[0])
            warnings.warn(message, UserWarning, stacklevel=3)

    def warn_each(self, key: str, message: str, listed: str) -> None:
        """Warn with ``message`` every time (a check skipped again), listing ``listed`` once per ``key``."""
        if key not in self._warned:
            self._warned.add(key)
            self.messages.append(listed)
        warnings.warn(message, UserWarning, stacklevel=3)

    def report(self, what: str, error: BaseException) -> None:
        """Raise ``error`` when strict; else warn once (with the traceback) that ``what`` failed."""
        if self.strict:
            raise error
        self.errors[what] = f"{type(error).__name__}: {error}"
        self._report(what, error, "training goes on.")

    def fail_method(self, name: str, error: BaseException) -> None:
        """Like :meth:`report`, and leave method ``name`` out of the later checks."""
        if self.strict:
            raise error
        self.failed_methods.add(name)
        self.errors[name] = f"{type(error).__name__}: {error}"
        self._report(name, error, "it is left out from now on; training goes on.")

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run the block; an exception in it is :meth:`report`-ed (raised when strict)."""
        try:
            yield
        except Exception as error:
            self.report(what, error)

    def _report(self, what: str, error: BaseException, consequence: str) -> None:
        self.warn_once(
            f"fail:{what}",
            f"CAMMonitor: {what} failed ({type(error).__name__}: {error}); {consequence}\n"
            + "".join(traceback.format_exception(error)),
        )
