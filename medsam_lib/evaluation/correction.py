"""A correction loop: after the box, simulated clicks where the mask is most wrong, up to ``ROUNDS`` times.

    frame = correction_loop(predictor, middle_slices(store), rounds=5, cache=cache)   # one row per target, round
    need = clicks_to_reach(frame, goal_dsc=0.9)          # per target: clicks until DSC >= 0.9 (inf: never)
    targets.task_means(frame, by=("round",), metrics=("dsc",))                        # per task and round
    clicks_table(need)                                    # per model, task: reached with the box, after clicks, never
    plot_rounds(summary, "rounds.png", "title")           # DSC per round, one panel per task

Round 0 is the box alone (the ideal box, or an ``annotator.Annotator``'s). Each later round adds one
click (``prompts.next_correction_click``: the deepest pixel of the largest error region, foreground in
a missed part, background in a wrongly included one) and predicts again from the box and every click
so far (``BoxPredictor.predict(box, points, labels)``; no mask prompt, as SAM's box + points). A target
whose mask is already exact gets no further click; its later rounds repeat its mask. The paper's models
were trained with box prompts only, so how much clicks help them is the question, not an assumption.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..fileio import MedSAMError
from ..prompts import next_correction_click
from .annotator import IDEAL, Annotator
from .inference import set_slice, target_rng
from .targets import SliceTarget, score_slice

ROUNDS = 5  # clicks after the box (issue 19; micro-sam's iterative evaluation also stops at a few)
DEMO_ROUNDS = 3  # notebook 08 on the synthetic demo (fast on 2 cores)
GOAL_DSC = 0.9  # "clicks to reach": the first round at or above this DSC

CORRECTION_COLUMNS = ("model", "round", "clicks", "click_x", "click_y", "click_label", "dataset", "case", "volume",
                      "image_key", "target", "instance", "task", "task_label", "modality", "split", "group", "slice",
                      "image_id", "x0", "y0", "x1", "y1", "predicted_iou", "iou", "dsc", "nsd")


def correct_target(predictor, target: SliceTarget, box, rounds: int = ROUNDS, cache=None) -> list[dict]:
    """One target's loop on the predictor: rows of round 0 (box) .. ``rounds``, each with the click added
    in that round (nan when none), the clicks so far, the decoder's predicted IoU and ``score_slice``'s
    IoU and DSC (NSD nan: ``correction_loop`` adds it when asked)."""
    set_slice(predictor, target.source(cache), target.image_id)
    points, labels, rows = [], [], []
    mask, score = None, None
    for r in range(rounds + 1):
        click = None
        if r > 0:
            click = next_correction_click(mask, target.gt)
            if click is not None:
                points.append(click[0])
                labels.append(click[1])
        if r == 0 or click is not None:
            result = predictor.predict(np.asarray(box, dtype=np.float64)[None],
                                       points=np.array(points).reshape(-1, 2), labels=np.array(labels, dtype=np.int64))
            mask, score = result.masks[0], float(result.scores[0])
        rows.append({"round": r, "clicks": len(points),
                     "click_x": float(click[0][0]) if click else math.nan,
                     "click_y": float(click[0][1]) if click else math.nan,
                     "click_label": click[1] if click else math.nan,
                     "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3], "predicted_iou": score,
                     "mask": mask})
    return rows


def correction_loop(predictor, targets: Sequence[SliceTarget], rounds: int = ROUNDS, cache=None,
                    annotator: Annotator = IDEAL, seed: int = 0, with_nsd: bool = False, progress: bool = True,
                    model: str | None = None):
    """``correct_target`` for every target, the box drawn by ``annotator`` (seeded per target as the
    annotator sweep draws it); a long DataFrame (``CORRECTION_COLUMNS``), one row per (target, round)."""
    import pandas as pd
    from tqdm.auto import tqdm

    if int(rounds) != rounds or rounds < 0:
        raise MedSAMError(f"rounds {rounds!r} must be a whole number >= 0")
    name = model or getattr(getattr(predictor, "loaded", None), "name", "model")
    out = []
    for target in tqdm(targets, desc="correction loop", unit="target", disable=not progress):
        box = annotator.draw(target.tight_box, target.gt.shape, target_rng(seed, target.key).standard_normal(4))
        for row in correct_target(predictor, target, box, int(rounds), cache):
            mask = row.pop("mask")
            out.append({"model": name, **row, **target.row(), **score_slice(mask, target, with_nsd)})
    return pd.DataFrame(out, columns=list(CORRECTION_COLUMNS))


def clicks_to_reach(frame, goal_dsc: float = GOAL_DSC):
    """Per (model, target): the clicks needed until the DSC first reaches ``goal_dsc`` (0: the box
    alone), ``inf`` when no round of the loop reached it; with ``reached``, the box-only and final DSC."""
    import pandas as pd

    keys = ["model", "dataset", "case", "volume", "image_key", "target", "instance"]
    rows = []
    for key, part in frame.sort_values("round").groupby(keys, sort=True):
        hit = part[part["dsc"] >= goal_dsc]
        clicks = float(hit["clicks"].iloc[0]) if len(hit) else math.inf
        first = part.iloc[0]
        rows.append({**dict(zip(keys, key)), "task_label": first["task_label"], "modality": first["modality"],
                     "group": first["group"], "goal_dsc": goal_dsc, "clicks_to_goal": clicks,
                     "reached": bool(len(hit)), "dsc_box": float(first["dsc"]),
                     "dsc_final": float(part["dsc"].iloc[-1]), "rounds": int(part["round"].max())})
    return pd.DataFrame(rows)


def clicks_table(need):
    """``clicks_to_reach`` per model and task: targets, how many reach the goal with the box alone, after
    1 .. rounds clicks, and never within the loop; the median clicks of those that reach it; mean DSC of
    the box alone and after the last round."""
    import pandas as pd

    rows = []
    for (model, task), part in need.groupby(["model", "task_label"], sort=True):
        clicks = part["clicks_to_goal"]
        reached = clicks[np.isfinite(clicks)]
        finite = np.isfinite(clicks)
        rows.append({"model": model, "task_label": task, "targets": len(part),
                     "goal_dsc": float(part["goal_dsc"].iloc[0]), "with the box": int((clicks == 0).sum()),
                     "after clicks": int(((clicks > 0) & finite).sum()), "never": int((~finite).sum()),
                     "median clicks (reached)": float(reached.median()) if len(reached) else math.nan,
                     "dsc box": float(part["dsc_box"].mean()), "dsc final": float(part["dsc_final"].mean()),
                     "rounds": int(part["rounds"].max())})
    return pd.DataFrame(rows)


def plot_rounds(summary, path, title: str, goal_dsc: float = GOAL_DSC):
    """DSC per round of the loop (0: the box alone), one panel per task, base and fine-tuned with 95%
    group-bootstrap CI bands; the goal DSC marked. ``summary``: ``targets.task_means(frame,
    by=("model", "round"), metrics=("dsc",))``. PNG, atomically."""
    from ..figures import task_curves

    return task_curves(summary, "round", "dsc", path, title, "clicks after the box (round)",
                       "DSC of the middle GT slice (0-1), mean over targets",
                       marks=[("h", float(goal_dsc), f"goal: DSC {goal_dsc:g}")], integer_x=True)
