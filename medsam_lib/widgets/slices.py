"""The slice embedding and the queue of boxes waiting for their slice (part of ``BoxPromptSession``).

Embedding runs on a background thread (``embedding.LatestEmbedder``): the slider shows a slice at
once with "embedding slice k…", only the slice it rests on is embedded (a slice passed over while
another is embedding is never embedded; a superseded result is not shown), and a box drawn before
its slice is ready waits, said in the message ("1 box waiting for slice k"), then gets its mask.
Boxes restored from the autosave on slices not shown are segmented while nothing else is asked for.
``wait()`` blocks until all of that is done.

Two locks: ``_predictor_lock`` is held while the predictor embeds or decodes (taken first), then
``_state_lock`` while boxes, waiting boxes or the picture change. ``SliceQueue`` is a part of
``session.BoxPromptSession`` and uses its ``predictor``, ``state``, ``source``, ``current_slice``,
``current``, ``_pixels``, and its ``_note``, ``_render``, ``_sync_boxes``, ``_report``, ``_set_boxes``,
``_guarded`` and ``_autosave``; its own state is made by ``_init_queue``.
"""
from __future__ import annotations

import threading

import numpy as np

from ..fileio import MedSAMError
from .embedding import NOTHING, LatestEmbedder
from .events import plural


class SliceQueue:
    """Which slice the predictor holds, which are being embedded, and the boxes waiting for them."""

    def _init_queue(self, restored: dict[int | None, list[tuple]], background: bool) -> None:
        """``restored``: the autosaved boxes per slice, waiting for their slice like new ones."""
        self._slice_errors: dict[int | None, str] = {}
        self._waiting: dict[int | None, list[tuple]] = dict(restored)  # box lists whose new boxes need their slice
        self._embedded = NOTHING  # the slice whose embedding the predictor holds
        self._predictor_lock = threading.RLock()  # held while the predictor embeds or decodes (then _state_lock)
        self._state_lock = threading.RLock()  # held while boxes, waiting boxes or the picture change
        self._embedder = LatestEmbedder(self._embed, self._embedding_done, background=background)

    def _segment(self, slice_index: int | None, box, points=()) -> tuple[np.ndarray, float]:
        """A box's mask and predicted IoU, with its points ((x, y, label), ...) when it has any."""
        with self._predictor_lock:
            if self._embedded != slice_index:  # e.g. a restored box on a slice not shown
                self._embed(slice_index)
            if points:
                result = self.predictor.predict([box], points=[[(x, y) for x, y, _ in points]],
                                                labels=[[label for *_, label in points]])
            else:
                result = self.predictor.predict([box])
        return result.masks[0], float(result.scores[0])

    # --- slices and embedding ---------------------------------------------------------------------
    def _where(self, index: int | None) -> str:
        return "the image" if index is None else f"slice {index}"

    def _status(self, index: int | None) -> str:
        """"embedding slice k…", with the boxes waiting for it."""
        text = f"embedding {self._where(index)}…"
        waiting = self._n_waiting(index)
        if waiting:
            text += f"\n{plural(waiting, 'box')} waiting for {self._where(index)}"
        return text

    def _n_waiting(self, index: int | None) -> int:
        return sum(not self.state.has_mask(index, box, label) for box, label in self._waiting.get(index, []))

    def _embed(self, index: int | None) -> None:
        """Give the predictor slice ``index``'s embedding (worker thread; cached ones are quick). Nothing to
        do when it holds that slice already: the pass asked for by boxes drawn while their slice was being
        embedded (``_take``) only segments them (a cached ``set_image`` would still recompute the decoder's
        image terms)."""
        with self._predictor_lock:
            if self._embedded == index:
                return
            self._embedded = NOTHING
            self.predictor.set_image(self._pixels(index), source=f"{self.source}" if index is None else
                                     f"{self.source} slice {index}")
            self._embedded = index

    def _embedding_done(self, index: int | None, seconds: float, error: Exception | None, stale: bool) -> None:
        """Called after each embedding (worker thread): a superseded slice is not shown."""
        with self._state_lock:
            if error is None:
                self._slice_errors.pop(index, None)
            else:
                self._slice_errors[index] = (str(error) if isinstance(error, MedSAMError) else
                                             f"unexpected error ({type(error).__name__}): {error}")
        if stale or index != self.current_slice:
            return
        self._guarded(self._slice_ready, index, seconds)
        if error is None:
            self._guarded(self._segment_elsewhere)

    def _slice_ready(self, index: int | None, seconds: float) -> None:
        error = self._slice_errors.get(index)
        if error is not None:
            with self._state_lock:
                dropped = self._waiting.pop(index, [])
                if dropped:
                    self.rejected.append(f"no mask on this slice: {error}")
                    self._sync_boxes()
            self._note(f"error: {error}" + (f"\nignored: {plural(len(dropped), 'box')} drawn on it" if dropped else ""))
            if dropped:
                self._autosave()
            return
        ready = f"{self._where(index)}: ready ({seconds:.1f} s)"
        with self._predictor_lock, self._state_lock:
            kept = self._waiting.pop(index, None)
            if kept is None:
                self._note(f"{ready}; {plural(len(self.current), 'box')} on it")
                return
            previous, annotations = self.state.set_boxes(index, kept)
            self._render()
        self._report(previous, annotations, [ready])
        self._autosave()

    def _segment_elsewhere(self) -> None:
        """Segment the boxes waiting on slices not shown (restored ones) while nothing else is asked
        for; the slice shown is embedded again afterwards (from the predictor's cache)."""
        for index in sorted((k for k in list(self._waiting) if k != self.current_slice), key=lambda k: k or 0):
            if self._embedder.pending is not NOTHING:
                return  # the slider moved: that comes first; these wait on
            with self._predictor_lock, self._state_lock:
                kept = self._waiting.get(index)
                if kept is None or index in self._slice_errors:
                    continue
                try:
                    self.state.set_boxes(index, kept)
                except MedSAMError as exc:
                    self._slice_errors[index] = str(exc)
                    self._note(f"error: {plural(len(kept), 'box')} on {self._where(index)} not segmented: {exc}")
                    continue
                self._waiting.pop(index)
            self._note(f"{self._where(index)}: {plural(len(kept), 'box')} segmented")
            self._autosave()
        with self._predictor_lock:
            if self._embedded != self.current_slice and self._embedder.pending is NOTHING:
                self._embed(self.current_slice)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no slice is being embedded and no box waits for its slice; False on timeout."""
        return self._embedder.wait(timeout)

    def _take(self, index: int | None, kept: list[tuple]):
        """Make ``kept`` the boxes of slice ``index`` now (-> (before, after)) when their masks are cached
        or the slice is embedded and the predictor free; else they wait for it (-> None)."""
        with self._state_lock:
            if self.state.cached(index, kept):
                self._waiting.pop(index, None)
                return self._set_boxes(index, kept)
        if self._predictor_lock.acquire(blocking=False):
            try:
                if self._embedded == index and not self._embedder.busy():
                    with self._state_lock:
                        self._waiting.pop(index, None)
                        return self._set_boxes(index, kept)
            finally:
                self._predictor_lock.release()
        with self._state_lock:
            self._waiting[index] = list(kept)
        self._embedder.request(index)  # embedded already: a cached pass, then the boxes are segmented
        return None

    def _boxes_on(self, index: int | None) -> list[tuple]:
        """A slice's boxes as drawn: those waiting for it, else those with masks."""
        waiting = self._waiting.get(index)
        return list(waiting) if waiting is not None else [(a.box, a.label) for a in self.state.on(index)]
