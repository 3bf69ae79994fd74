"""Writing in the background: PNG encoding and logger I/O overlap training instead of pausing it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["BackgroundWriter"]

Job = tuple[str, Callable[[], None]]


class BackgroundWriter:
    """Runs write jobs in the order they came, on one daemon thread.

    PIL releases the GIL while it compresses a PNG and file writes release it too, so on a GPU
    run the encoding costs the training loop almost nothing. The queue is bounded: if writing
    falls behind, :meth:`submit` waits rather than holding every pending image in memory. Errors
    are kept and handed back by :meth:`take_errors` / :meth:`drain` on the caller's thread.
    """

    def __init__(self, max_pending: int = 32) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_pending)
        self._errors: list[tuple[str, BaseException]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, int]:
        """Copies and pickles (of a callback holding this) start empty, without the thread."""
        return {"max_pending": self._jobs.maxsize}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["max_pending"])  # type: ignore[misc]

    def submit(self, what: str, job: Callable[[], None]) -> None:
        """Queue ``job``; ``what`` names it in error reports."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="lightning-cam-writer", daemon=True)
            self._thread.start()
        self._jobs.put((what, job))

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            try:
                if item is None:
                    return
                what, job = item
                try:
                    job()
                except Exception as error:
                    with self._lock:
                        self._errors.append((what, error))
            finally:
                self._jobs.task_done()

    def take_errors(self) -> list[tuple[str, BaseException]]:
        """The errors of the jobs run so far (each handed back once)."""
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def drain(self) -> list[tuple[str, BaseException]]:
        """Wait until every queued job has run; return their errors."""
        if self._thread is not None:
            self._jobs.join()
        return self.take_errors()

    def close(self) -> list[tuple[str, BaseException]]:
        """Drain, then stop the thread."""
        errors = self.drain()
        if self._thread is not None and self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._thread = None
        return errors
