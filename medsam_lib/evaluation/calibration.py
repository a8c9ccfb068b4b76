"""Does the decoder know when it is wrong? Its predicted IoU against the measured IoU, per target.

    frame = annotator.annotator_sweep(predictor, targets, [annotator.IDEAL])   # predicted_iou, iou, dsc per target
    bins = reliability_bins(frame["predicted_iou"], frame["iou"])    # the reliability diagram's numbers
    ece = expected_calibration_error(frame["predicted_iou"], frame["iou"])
    auc = failure_auroc(frame["predicted_iou"], frame["dsc"])        # how well it ranks DSC < 0.7 first
    plot_reliability({"base": frame_b, "finetuned": frame_f}, "reliability.png", "title")
    flag_table({"base": frame_b, "finetuned": frame_f})              # masks flagged, and how many of them failed
    quality_flag(prediction.scores[0])                              # True: the mask is likely wrong

SAM's decoder (LiteMedSAM's and MedSAM's alike) outputs, beside each mask, a predicted IoU: an MLP
head on the IoU token, trained to regress the mask's IoU with the truth, with no final sigmoid, so
unbounded (values above 1 occur: segment-anything issue #495). Definitions used here:

- Reliability bins: ``n_bins`` equal-width bins of [0, 1] by predicted IoU: bin b holds
  b / n_bins <= value < (b + 1) / n_bins (edges ``np.arange(n_bins + 1) / n_bins``: a value on an inner
  edge belongs to the bin above it), 1.0 the last bin. Predicted values outside [0, 1] are counted in
  the end bins and keep their own value in the bin's mean (an overshoot above 1 is a calibration
  error, not rounded away). Per bin: count, mean predicted IoU, mean measured IoU (empty bins: count
  0, means nan).
- Expected calibration error (ECE): sum over bins of (count / N) * |mean predicted - mean measured|,
  the binned calibration error of a regression onto [0, 1] (Guo et al. 2017's form, with the measured
  IoU in place of the accuracy).
- Failure AUROC: the probability that a target with DSC < ``LIKELY_WRONG_DSC`` (a failure) has a lower
  predicted IoU than a target without (ties count half), i.e. the Mann-Whitney U statistic divided by
  (failures x successes), from average ranks; nan when either group is empty. 0.5 ranks no better than
  chance, 1.0 puts every failure below every success.
- ``quality_flag``: the predicted IoU says the mask is likely wrong when it is under
  ``QUALITY_IOU_THRESHOLD``, the IoU of a mask whose DSC is ``LIKELY_WRONG_DSC`` (IoU = DSC / (2 - DSC),
  0.538 for DSC 0.7): the flag takes the decoder at its word. How often that word holds (calibration,
  ``flag_performance``) is what notebook 08 measures, per model. The flag and its constants live in
  ``models.quality`` (``segment`` and notebook 07 show it without importing the evaluation) and are
  re-exported here.
"""
from __future__ import annotations

import math

import numpy as np

from ..fileio import MedSAMError
from ..models.quality import LIKELY_WRONG_DSC, QUALITY_IOU_THRESHOLD, quality_flag  # noqa: F401 (their home)

N_BINS = 10


def _pair(predicted, measured, what: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted, dtype=np.float64).ravel()
    m = np.asarray(measured, dtype=np.float64).ravel()
    if p.shape != m.shape:
        raise MedSAMError(f"{what}: {p.size} predicted values but {m.size} measured ones")
    if not (np.isfinite(p).all() and np.isfinite(m).all()):
        raise MedSAMError(f"{what}: NaN or infinite values ({int((~np.isfinite(p)).sum() + (~np.isfinite(m)).sum())})")
    return p, m


def bin_index(predicted, n_bins: int = N_BINS) -> np.ndarray:
    """Each predicted IoU's bin (0 .. n_bins - 1), as the module docstring defines them."""
    if int(n_bins) < 1:
        raise MedSAMError(f"n_bins {n_bins!r} must be >= 1")
    edges = np.arange(int(n_bins) + 1) / int(n_bins)
    return np.clip(np.searchsorted(edges, np.asarray(predicted, dtype=np.float64), side="right") - 1, 0, n_bins - 1)


def reliability_bins(predicted, measured, n_bins: int = N_BINS):
    """The reliability diagram's table: one row per bin with ``lo``, ``hi``, ``count``,
    ``mean_predicted``, ``mean_measured`` (a DataFrame)."""
    import pandas as pd

    p, m = _pair(predicted, measured, "reliability bins")
    which = bin_index(p, n_bins)
    edges = np.arange(int(n_bins) + 1) / int(n_bins)
    rows = []
    for b in range(int(n_bins)):
        inside = which == b
        count = int(inside.sum())
        rows.append({"bin": b, "lo": edges[b], "hi": edges[b + 1], "count": count,
                     "mean_predicted": float(p[inside].mean()) if count else math.nan,
                     "mean_measured": float(m[inside].mean()) if count else math.nan})
    return pd.DataFrame(rows)


def expected_calibration_error(predicted, measured, n_bins: int = N_BINS) -> float:
    """Sum over bins of (count / N) |mean predicted - mean measured|; nan without values."""
    bins = reliability_bins(predicted, measured, n_bins)
    total = int(bins["count"].sum())
    if total == 0:
        return math.nan
    used = bins[bins["count"] > 0]
    return float((used["count"] / total * (used["mean_predicted"] - used["mean_measured"]).abs()).sum())


def auroc(scores, positive) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (bool): P(score of a positive > score of a
    negative) + P(tie) / 2, from average ranks (Mann-Whitney U); nan when a class is empty."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64).ravel()
    pos = np.asarray(positive, dtype=bool).ravel()
    if s.shape != pos.shape:
        raise MedSAMError(f"AUROC: {s.size} scores but {pos.size} labels")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)  # average ranks: ties share
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def failure_auroc(predicted_iou, dsc, threshold: float = LIKELY_WRONG_DSC) -> float:
    """How well a low predicted IoU ranks the failures (DSC < ``threshold``) first (module docstring)."""
    p, d = _pair(predicted_iou, dsc, "failure AUROC")
    return auroc(-p, d < threshold)


def flag_performance(predicted_iou, dsc, threshold: float = QUALITY_IOU_THRESHOLD,
                     failure_dsc: float = LIKELY_WRONG_DSC) -> dict:
    """The quality flag (predicted IoU < ``threshold``) as a failure detector: counts, the fraction of
    failures flagged (sensitivity), of successes not flagged (specificity), of flags that were failures
    (precision); nan where undefined."""
    p, d = _pair(predicted_iou, dsc, "quality flag")
    flagged, failed = p < threshold, d < failure_dsc
    tp, fp = int((flagged & failed).sum()), int((flagged & ~failed).sum())
    fn, tn = int((~flagged & failed).sum()), int((~flagged & ~failed).sum())
    ratio = (lambda a, b: a / b if b else math.nan)
    return {"targets": int(p.size), "failures": tp + fn, "flagged": tp + fp, "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "precision": ratio(tp, tp + fp)}


def flag_table(frames: dict, threshold: float = QUALITY_IOU_THRESHOLD, failure_dsc: float = LIKELY_WRONG_DSC):
    """How many masks of each model in ``frames`` {model: frame with ``predicted_iou``, ``dsc``} the quality flag
    marks (predicted IoU < ``threshold``), how many of those are failures (DSC < ``failure_dsc``), and how
    many failures it lets through unflagged; one row per model (a DataFrame)."""
    import pandas as pd

    rows = []
    for name, frame in frames.items():
        p, d = _pair(frame["predicted_iou"], frame["dsc"], f"quality flag ({name})")
        flagged, failed = p < threshold, d < failure_dsc
        rows.append({"model": name, "masks": int(p.size), "flagged": int(flagged.sum()),
                     "flagged and failed": int((flagged & failed).sum()),
                     "flagged but fine": int((flagged & ~failed).sum()), "failures": int(failed.sum()),
                     "failures not flagged": int((failed & ~flagged).sum())})
    return pd.DataFrame(rows)


def calibration_summary(frames: dict, n_bins: int = N_BINS):
    """One row per model of ``frames`` {model: frame with ``predicted_iou``, ``iou``, ``dsc``}: targets, mean
    predicted and measured IoU, ECE, failure AUROC and the quality flag's performance."""
    import pandas as pd

    rows = []
    for name, frame in frames.items():
        p, m, d = frame["predicted_iou"], frame["iou"], frame["dsc"]
        rows.append({"model": name, "targets": len(frame), "mean_predicted_iou": float(np.mean(p)),
                     "mean_measured_iou": float(np.mean(m)), "ece": expected_calibration_error(p, m, n_bins),
                     "failure_auroc": failure_auroc(p, d),
                     **{f"flag_{k}": v for k, v in flag_performance(p, d).items() if k != "targets"}})
    return pd.DataFrame(rows)


def plot_reliability(frames: dict, path, title: str, n_bins: int = N_BINS):
    """The reliability diagram of each model in ``frames`` {model: frame with ``predicted_iou``, ``iou``,
    ``dsc``}: mean measured against mean predicted IoU per bin (perfect calibration on the diagonal),
    above the bins' counts; ECE and failure AUROC in the legend. Saved as PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..figures import MODEL_COLOURS, MODEL_NAMES, PALETTE, save_figure

    if not frames:
        raise MedSAMError("plot_reliability: no model frames to plot")
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5.6, 6.4), sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    width = 1.0 / n_bins / (len(frames) + 1)
    for k, (name, frame) in enumerate(frames.items()):
        colour = MODEL_COLOURS.get(name, PALETTE[k % len(PALETTE)])
        bins = reliability_bins(frame["predicted_iou"], frame["iou"], n_bins)
        ece = expected_calibration_error(frame["predicted_iou"], frame["iou"], n_bins)
        auc = failure_auroc(frame["predicted_iou"], frame["dsc"])
        used = bins[bins["count"] > 0]
        ax.plot(used["mean_predicted"], used["mean_measured"], marker="o", color=colour,
                label=f"{MODEL_NAMES.get(name, name)}: ECE {ece:.3f}, AUROC (DSC < {LIKELY_WRONG_DSC:g}) "
                      f"{'n/a' if math.isnan(auc) else f'{auc:.2f}'}, {len(frame)} masks")
        counts.bar(bins["lo"] + (k + 0.5) * width, bins["count"], width=width, color=colour, align="edge")
    ax.axvline(QUALITY_IOU_THRESHOLD, color="black", ls=":", lw=1,
               label=f"quality flag below {QUALITY_IOU_THRESHOLD:.3f} (IoU of DSC {LIKELY_WRONG_DSC:g})")
    highest = max(float(np.max(frame["predicted_iou"])) for frame in frames.values())
    ax.set_xlim(0, max(1.05, highest + 0.02))  # an overshoot above 1 stays in view
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("measured IoU with the ground truth (0-1), bin mean")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=10)
    counts.set_xlabel(f"predicted IoU (the decoder's score, 0-1; {n_bins} equal bins, values > 1 in the last)")
    counts.set_ylabel("masks per bin")
    counts.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, close=True)
