"""Embed the slice the slider rests on, on a background thread; superseded requests are dropped.

    embedder = LatestEmbedder(embed=lambda index: ..., done=lambda index, seconds, error, stale: ...)
    embedder.request(6); embedder.request(9)   # 6 may already be under way; 9 is embedded next
    embedder.wait()                             # until nothing is asked for or under way

Only the latest request waits: one made while another is pending replaces it, so a slider dragged
across ten slices embeds the slice it started from (already under way) and the one it rests on, not
the eight in between. ``done`` is called on the worker thread after each embedding, with
``stale=True`` when a newer slice was asked for meanwhile (its result must not be shown). With
``background=False`` (papermill, tests) ``request`` embeds at once, in the caller's thread. Needs no
widget and no model: the session passes its own ``embed``.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

NOTHING = object()  # no slice asked for (None is a real index: a 2D image)


class LatestEmbedder:
    """Runs ``embed(index)`` for the latest requested index, one at a time (see the module docstring)."""

    def __init__(self, embed: Callable[[object], None], done: Callable[[object, float, Exception | None, bool], None],
                 background: bool = True):
        self._embed = embed
        self._done = done
        self.background = background
        self._cond = threading.Condition()
        self._pending = NOTHING
        self._running = NOTHING
        self._thread: threading.Thread | None = None

    @property
    def running(self):
        """The index being embedded now (``NOTHING`` when idle)."""
        return self._running

    @property
    def pending(self):
        """The index to embed next (``NOTHING`` when none)."""
        return self._pending

    def busy(self) -> bool:
        return self._pending is not NOTHING or self._running is not NOTHING

    def request(self, index) -> None:
        """Embed ``index`` next (in the background), replacing any request not yet started."""
        if not self.background:
            self._run(index, stale=lambda: False)
            return
        with self._cond:
            self._pending = index  # also when ``index`` is under way: boxes may wait for it (a cached pass)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="medsam-embed", daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending or under way; False if ``timeout`` (seconds) passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self.busy(), timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._pending is NOTHING:
                    self._thread = None  # no idle thread is kept; the next request starts one
                    self._cond.notify_all()
                    return
                index, self._pending, self._running = self._pending, NOTHING, self._pending
            try:
                self._run(index, stale=lambda: self._pending is not NOTHING and self._pending != index)
            finally:
                with self._cond:
                    self._running = NOTHING
                    self._cond.notify_all()

    def _run(self, index, stale: Callable[[], bool]) -> None:
        started = time.perf_counter()
        error = None
        try:
            self._embed(index)
        except Exception as exc:  # noqa: BLE001 - reported through ``done``; the worker must keep going
            error = exc
        self._done(index, time.perf_counter() - started, error, stale())
