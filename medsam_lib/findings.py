""""What this run shows": each notebook's closing summary, computed from the tables it made.

Nothing here is written in advance: every sentence states a count, a direction, whether a bootstrap
95% CI of a paired difference excludes 0, or the best and worst rows, from the run's own numbers.
Each ``*_findings`` function takes a notebook's tables and returns Markdown (a heading and bullets).

    paired_difference(a, b)     # b - a per pair: n, mean, 95% CI, direction, CI excludes 0
    tables_findings(long, frames, effects)   # notebook 05
    protocol_findings(runs)   # notebook 05: tight vs jittered test boxes
    beyond_findings(pinned, sweep, calibration, flags, correction, need, goal_dsc)   # notebook 08
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .data.splits import SPLITS
from .evaluation.tables import MIN_CASES_TEST, bootstrap_ci, per_case, per_group
from .models.quality import LIKELY_WRONG_DSC, QUALITY_IOU_THRESHOLD, QUALITY_LIKELY_WRONG

HEADING = "### What this run shows"
EQUAL = 1e-9  # |mean difference| below this (float noise of equal values) counts as no difference
MIN_PAIRS_CI = MIN_CASES_TEST  # a bootstrap CI of 2-4 pairs only spans the values themselves: none is claimed
FILTERED = "masks passing SAM's filters"
NO_FIT_DICE = 0.5  # a multimask candidate under this Dice does not segment the target


@dataclass(frozen=True)
class Difference:
    """``b - a`` over paired values: n pairs, the mean and its bootstrap 95% CI (nan under ``MIN_PAIRS_CI``)."""

    n: int
    mean: float
    lo: float
    hi: float

    @property
    def direction(self) -> str:
        """"higher", "lower" or "equal" (b against a)."""
        if self.n == 0 or math.isnan(self.mean) or abs(self.mean) < EQUAL:
            return "equal"
        return "higher" if self.mean > 0 else "lower"

    @property
    def ci_excludes_zero(self) -> bool:
        """True only when a CI exists (n >= ``MIN_PAIRS_CI``) and lies wholly above or below 0."""
        return not math.isnan(self.lo) and (self.lo > 0 or self.hi < 0)

    def describe(self, digits: int = 3, unit: str = "") -> str:
        """"-0.012 (95% CI -0.030 to 0.004, includes 0; n = 5)" or "... (n = 3: too few for a CI, ...)"."""
        text = f"{self.mean:+.{digits}f}{unit}"
        if math.isnan(self.lo):
            return f"{text} (n = {self.n}: too few for a CI, which needs {MIN_PAIRS_CI})"
        verdict = "excludes 0" if self.ci_excludes_zero else "includes 0"
        return f"{text} (95% CI {self.lo:+.{digits}f} to {self.hi:+.{digits}f}, {verdict}; n = {self.n})"


def paired_difference(a, b, seed: int = 0) -> Difference:
    """``b - a`` for paired arrays (pairs with a NaN dropped); the CI is ``tables.bootstrap_ci``'s, computed
    from ``MIN_PAIRS_CI`` pairs on."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in shape: {a.shape} vs {b.shape}")
    diff = (b - a)[~(np.isnan(a) | np.isnan(b))]
    if diff.size == 0:
        return Difference(0, math.nan, math.nan, math.nan)
    lo, hi = bootstrap_ci(diff, seed) if diff.size >= MIN_PAIRS_CI else (math.nan, math.nan)
    return Difference(int(diff.size), float(diff.mean()), lo, hi)


def best_and_worst(frame, value: str, label: str) -> tuple[tuple[str, float], tuple[str, float]]:
    """((label, value) of the highest row, (label, value) of the lowest), NaN rows skipped."""
    rows = frame.dropna(subset=[value])
    if not len(rows):
        raise ValueError(f"no rows with a value in column {value!r}")
    top, bottom = rows[value].idxmax(), rows[value].idxmin()  # row labels: a row as a Series would cast its label
    return ((str(rows.at[top, label]), float(rows.at[top, value])),
            (str(rows.at[bottom, label]), float(rows.at[bottom, value])))


def as_markdown(bullets: list[str]) -> str:
    return "\n".join([HEADING, ""] + [f"- {b}" for b in bullets]) + "\n"


def _compare(name_b: str, name_a: str, d: Difference, what: str, digits: int = 3, unit: str = "") -> str:
    if d.direction == "equal":
        return f"{what}: {name_b} and {name_a} are equal (n = {d.n})."
    return f"{what}: {name_b} is {d.direction} than {name_a} by {d.describe(digits, unit)}."


# --- one function per notebook ---------------------------------------------------------------

def quickstart_findings(table, label: str = "example", noun: str = "example(s)") -> str:
    """Notebooks 00 and 07 (``label="box #"``, ``noun="box(es)"``): how well one box segments each
    row's target, and the model's own estimate beside it."""
    scored = table.dropna(subset=["Dice vs reference"])
    if not len(table):
        return as_markdown(["No box was drawn in this run: nothing to score (draw one in the widget, or set "
                            "`box` in the parameters cell)."])
    refined = int((table["points"].fillna("") != "").sum()) if "points" in table else 0
    how = f"with one box each, {refined} of them refined with points" if refined else "with one box each"
    bullets = [f"{len(table)} {noun} segmented {how}; {len(scored)} with a reference mask."]
    if "quality" in table:
        flagged = int((table["quality"] == QUALITY_LIKELY_WRONG).sum())
        bullets.append(f"The quality flag (the model's own predicted IoU under {QUALITY_IOU_THRESHOLD:.3f}, the IoU "
                       f"of a DSC-{LIKELY_WRONG_DSC:g} mask) marks {flagged} of {len(table)} as likely wrong.")
    if len(scored):
        (best, b), (worst, w) = best_and_worst(scored, "Dice vs reference", label)
        bullets.append(f"Dice against the reference: best {b:.3f} ({best}), worst {w:.3f} ({worst})." if len(scored) > 1
                       else f"Dice against the reference: {b:.3f} ({best}).")
        gap = (scored["predicted IoU"] - scored["Dice vs reference"]).abs()
        spread = f"{gap.min():.3f}" if len(scored) == 1 else f"{gap.min():.3f} to {gap.max():.3f}"
        bullets.append(f"The model's predicted IoU differs from the measured Dice by {spread}: it is an estimate, "
                       "not a measurement.")
    return as_markdown(bullets)


def teardown_findings(modes_table, multimask_table) -> str:
    """Notebook 01: the box mode against the point mode, and whether SAM's multimask pick fits best."""
    dice_col = next(c for c in modes_table.columns if c.startswith("Dice vs"))
    box = modes_table.loc[modes_table["panel"] == "box", dice_col].iloc[0]
    points = modes_table[modes_table["panel"].str.startswith("points")]
    bullets = []
    if len(points):
        best = points.loc[points[dice_col].idxmax()]
        word = "above" if box > best[dice_col] else "below" if box < best[dice_col] else "equal to"
        bullets.append(f"The box gives Dice {box:.3f}, {word} the best point prompt ({best[dice_col]:.3f} with "
                       f"{best['panel'].split(': ')[1]} clicks).")
    everything = modes_table[modes_table["panel"] == "segment everything"].iloc[0]
    bullets.append(f"Segment everything made {int(everything['masks'])} masks; "
                   f"{int(everything[FILTERED])} pass SAM's default filters.")
    mm_dice = next(c for c in multimask_table.columns if c.startswith("Dice vs"))
    for model, part in multimask_table.groupby("model", sort=False):
        pick = part[part["SAM's pick"]].iloc[0]
        fits = part[mm_dice].max()
        if fits < NO_FIT_DICE:
            verdict = f"one of {len(part)} candidates none of which fits the target (best Dice {fits:.3f})"
        else:
            verdict = "the best-fitting one" if pick[mm_dice] >= fits else f"not the best-fitting one (Dice {fits:.3f})"
        bullets.append(f"{model}: SAM's multimask pick (candidate {int(pick['candidate'])}, Dice "
                       f"{pick[mm_dice]:.3f}) is {verdict}.")
    return as_markdown(bullets)


def curation_findings(index, comparison=None) -> str:
    """Notebook 02: how much was curated, how it splits, and what the other preset keeps."""
    cases = index[["dataset", "case"]].drop_duplicates()
    split = index.drop_duplicates(["dataset", "case"])["split"].value_counts()
    bullets = [f"{len(cases)} cases, {index['image_id'].nunique()} curated slices, {len(index)} targets; "
               + ", ".join(f"{int(split.get(s, 0))} cases in {s}" for s in SPLITS
                           if s != "validation" or s in split.index) + "."]  # validation where the manifest has one
    if comparison is not None and len(comparison.columns) == 2:
        first, second = comparison.columns
        diff = comparison[second] - comparison[first]
        moved = diff[diff != 0]
        if len(moved):
            parts = ", ".join(f"{key[-1]} {int(comparison.loc[key, first])} -> {int(comparison.loc[key, second])}"
                              for key in moved.index)
            bullets.append(f"Targets kept, {first.split('(')[1][:-1]} -> {second.split('(')[1][:-1]} preset: {parts}; "
                           f"{int((diff == 0).sum())} data set(s) unchanged.")
        else:
            bullets.append("Both presets keep the same number of targets in every data set.")
    return as_markdown(bullets)


def embeddings_findings(stats: dict, agreement) -> str:
    """Notebook 03: how many embeddings the store holds and whether they match the predictor's. How many
    were computed in this run (rather than reused) is a property of the run's cache, not a finding: the
    cell above prints it."""
    total = stats["computed"] + stats["copied"] + stats["kept"]
    bullets = [f"{total} embeddings in the store."]
    cos = agreement["cosine (store vs set_image)"]
    low = agreement.loc[cos.idxmin()]
    bullets.append(f"Stored vs freshly encoded, {len(agreement)} modalities: lowest cosine similarity "
                   f"{cos.min():.4f} ({low['modality']}).")
    return as_markdown(bullets)


def finetuning_findings(before_after, seed: int = 0) -> str:
    """Notebook 04: base against fine-tuned on the validation targets (per target group, paired)."""
    groups = before_after[before_after["dataset"] != "all"]
    overall = before_after[before_after["dataset"] == "all"].iloc[0]
    d = paired_difference(groups["base_dsc"], groups["finetuned_dsc"], seed)
    bullets = [f"Validation Dice over {int(overall['targets'])} targets: base {overall['base_dsc']:.4f}, "
               f"fine-tuned {overall['finetuned_dsc']:.4f}.",
               _compare("fine-tuned", "base", d, "Per target group (paired)", digits=4)]
    change = groups["finetuned_dsc"] - groups["base_dsc"]
    bullets.append(f"{int((change > 0).sum())} group(s) improved, {int((change < 0).sum())} got worse; largest "
                   f"gain {change.max():+.4f} ({groups.loc[change.idxmax(), 'target']}), largest loss "
                   f"{change.min():+.4f} ({groups.loc[change.idxmin(), 'target']}).")
    bullets.append("Validation cases chose best.pt, so this is not a test score (notebook 05 is).")
    return as_markdown(bullets)


def group_difference(base, finetuned, labels, metric: str, seed: int = 0) -> Difference:
    """Fine-tuned minus base in % over the groups (the split unit: a subject or an acquisition) of the task
    ``labels``: each model's cases averaged per group first (``tables.per_group``), so frames of one
    acquisition or eyes of one child are one pair, and the bootstrap resamples groups."""
    a, b = per_group(per_case(base)).reset_index(), per_group(per_case(finetuned)).reset_index()
    a = a[a["task_label"].isin(list(labels))]
    paired = a.merge(b, on=["task_label", "group"], suffixes=("_b", "_f"))
    return paired_difference(paired[f"{metric}_b"] * 100, paired[f"{metric}_f"] * 100, seed)


def _scored(long, table: int):
    """A table's rows with test cases: the paper tasks, and targets that are no paper task (marked *)."""
    return long[(long["table"] == table) & (long["n_cases"] > 0)]


def tables_findings(long, frames: dict, effects=None, seed: int = 0) -> str:
    """Notebook 05: per table, the averages, fine-tuned minus base over paired test groups, the best
    and worst task, and the largest gap to the published MedSAM (with the 2D NSD definition beside it)."""
    bullets = []
    for table in (1, 2):
        part = _scored(long, table)
        if not len(part):
            bullets.append(f"Table {table}: no task with test cases in this profile.")
            continue
        paper = part[part["paper_task"]]
        ours = "dsc_finetuned" if part["dsc_finetuned"].notna().any() else "dsc_base"
        extra = len(part) - len(paper)
        line = (f"Table {table}: {len(paper)} paper task(s)" + (f" and {extra} target(s) that are no paper task (*)"
                                                                 if extra else "")
                + f", {int(part['n_cases'].sum())} test case(s); average DSC base {part['dsc_base'].mean():.2f}")
        if ours == "dsc_finetuned":
            line += f", fine-tuned {part['dsc_finetuned'].mean():.2f} ({part['dsc_improve'].mean():+.2f} points)"
        bullets.append(line + ".")
        if "finetuned" in frames:
            for metric in ("dsc", "nsd"):
                d = group_difference(frames["base"], frames["finetuned"], part["task"], metric, seed)
                bullets.append(_compare("fine-tuned", "base", d, f"Table {table} {metric.upper()} per test group",
                                        digits=2, unit=" points"))
        (best, b), (worst, w) = best_and_worst(part, ours, "task")
        bullets.append(f"Table {table} best task {best} ({b:.2f} DSC), worst {worst} ({w:.2f}).")
        gaps = part.dropna(subset=["nsd_vs_medsam"])
        if len(gaps):
            far = gaps.loc[gaps["nsd_vs_medsam"].abs().idxmax()]
            bullets.append(f"Table {table} largest NSD gap to the published MedSAM: {far['task']} "
                           f"{far['nsd_vs_medsam']:+.2f} points.")
    note = nsd_2d_note(effects)
    if note:
        bullets.append(note)
    return as_markdown(bullets)


def protocol_findings(runs: dict, seed: int = 0) -> str:
    """Notebook 05, both test-box protocols (``chain.run_test_boxes``): per protocol, fine-tuned minus base
    DSC over every scored task's test groups, and the tasks where the paired Wilcoxon test finds a change
    (p < 0.05) in each direction; the same models and cases, only the boxes differ."""
    import pandas as pd

    bullets = []
    for name, run in runs.items():
        if "finetuned" not in run.frames:
            bullets.append(f"Test boxes {name}: no fine-tuned model, nothing to compare.")
            continue
        rows = pd.concat([_scored(run.long, 1), _scored(run.long, 2)], ignore_index=True)
        d = group_difference(run.frames["base"], run.frames["finetuned"], rows["task"], "dsc", seed)
        bullets.append(_compare("fine-tuned", "base", d, f"Test boxes {name}, DSC per test group over "
                                                          f"{len(rows)} task(s)", digits=2, unit=" points"))
        tested = rows.dropna(subset=["dsc_p"])
        up = tested[(tested["dsc_p"] < 0.05) & (tested["dsc_improve"] > 0)]["task"].tolist()
        down = tested[(tested["dsc_p"] < 0.05) & (tested["dsc_improve"] < 0)]["task"].tolist()
        bullets.append(f"Test boxes {name}: of {len(tested)} task(s) with >= {MIN_CASES_TEST} groups, Wilcoxon "
                       f"p < 0.05 for a higher fine-tuned DSC in {len(up)} ({', '.join(up) or 'none'}) and a lower "
                       f"one in {len(down)} ({', '.join(down) or 'none'}).")
    return "\n".join(["#### Both test-box protocols", ""] + [f"- {b}" for b in bullets]) + "\n"


def nsd_2d_note(effects) -> str:
    """Table 2's NSD under this project's 2D definition and under the released evaluation's one-slice
    slab (the choice table's ``nsd_2d`` row), or "" when that row is absent."""
    if effects is None or "nsd_2d" not in set(effects["choice"]):
        return ""
    base = effects[(effects["choice"] == "paper defaults") & (effects["model"] == "base")]["T2 NSD"]
    slab = effects[(effects["choice"] == "nsd_2d") & (effects["model"] == "base")]["T2 NSD"]
    if not len(base) or not len(slab) or math.isnan(float(base.iloc[0])):
        return ""
    return (f"Table 2's NSD is the 2D contour NSD: base average {float(base.iloc[0]):.2f}. Scored on a one-slice "
            f"slab, as the released LiteMedSAM evaluation does, it reads {float(slab.iloc[0]):.2f}: a slab's faces "
            "count as surface, so it measures area overlap. The paper's 2D NSD was most likely computed that way "
            "(../shared/paper/README.md), so compare its Table 2 NSD with the slab value, not with ours.")


def _mode_sentences(modes) -> list[str]:
    """Per model and Fig. 5 mode, from ``failures.failure_modes_table``: how many of the failures meet it,
    in which tasks, and the mean DSC of the targets meeting it against the rest."""
    from .evaluation.failures import FAILURE_DSC, MODES

    out = []
    for name, part in modes.groupby("model", sort=False):
        first = part.drop_duplicates(["dataset", "target"])
        failed, scored = int(first["n_failed"].sum()), int(first["n_targets"].sum())
        if not failed:
            out.append(f"{name}: no target of {scored} under DSC {FAILURE_DSC:g}, so none of Fig. 5's modes to "
                       "look for among failures.")
            continue
        for mode in MODES:
            rows = part[part["mode"] == mode]
            k = int(rows["failed_meeting"].sum())
            flagged = int(rows["flagged"].sum())
            if not k:
                out.append(f"{name}, {mode}: 0 of {failed} failures (looked for, not found in this split; "
                           f"{flagged} of {scored} targets meet it).")
                continue
            where = ", ".join(f"{r.dataset} / {r.target} {int(r.failed_meeting)}"
                              for r in rows[rows["failed_meeting"] > 0].itertuples())
            meets = (rows["dsc_meeting"] * rows["flagged"]).sum() / flagged
            rest = rows["n_targets"] - rows["flagged"]
            text = f"{name}, {mode}: {k} of {failed} failures (task {where})"
            if rest.sum():
                other = (rows["dsc_not"].fillna(0) * rest).sum() / rest.sum()
                text += (f"; mean DSC {meets:.3f} over the {flagged} targets meeting it against {other:.3f} over "
                         f"the other {int(rest.sum())}")
            out.append(text + ".")
    return out


def failures_findings(cases: dict, sweep, strata, seed: int = 0, tight: int = 0, compare_at: int = 20,
                      modes=None) -> str:
    """Notebook 06: how many targets fail, which of Fig. 5's modes they meet (``modes``: the
    ``failures.failure_modes_table``, optional), what the box sweep shows, and how size matters."""
    from .evaluation.failures import FAILURE_DSC

    bullets = []
    for name, found in cases.items():
        if not found:
            bullets.append(f"{name}: no target under DSC {FAILURE_DSC:g}.")
            continue
        rules = sorted({r.split(":")[0] for c in found for r in c["rules"]})
        bullets.append(f"{name}: {found[0]['failed']} of {found[0]['of']} targets under DSC {FAILURE_DSC:g} "
                       f"(the lowest {len(found)} shown); rules they meet: {', '.join(rules)}.")
    if modes is not None:
        bullets += _mode_sentences(modes)
    means = sweep.groupby(["model", "margin"])["dsc"].mean()
    for name in dict.fromkeys(sweep["model"]):
        curve = means.loc[name]
        best = int(curve.idxmax())
        if tight in curve.index:
            word = "the best" if best == tight else f"below +{best} px ({curve[best]:.3f})"
            bullets.append(f"{name}: a tight box (+{tight} px) scores {curve[tight]:.3f}, {word}; at +"
                           f"{int(curve.index.max())} px {curve.iloc[-1]:.3f}.")
    if {"base", "finetuned"} <= set(sweep["model"]) and compare_at in set(sweep["margin"]):
        at = sweep[sweep["margin"] == compare_at].pivot_table(index=["image_id", "target"], columns="model",
                                                              values="dsc", aggfunc="mean")
        d = paired_difference(at["base"], at["finetuned"], seed)
        bullets.append(_compare("fine-tuned", "base", d, f"Box sweep at +{compare_at} px (inside the training "
                                "jitter range), per target"))
    scored = strata[strata["n"] > 0]
    for name, part in scored.groupby("model", sort=False):
        (big, b), (small, s) = best_and_worst(part, "dsc", "size")
        bullets.append(f"{name}: highest mean DSC in the {big} size stratum ({b:.3f}), lowest in {small} "
                       f"({s:.3f}); strata hold {', '.join(str(int(n)) for n in part['n'])} targets.")
    return as_markdown(bullets)


def experiment_findings(versus) -> str:
    """Notebook 04's experiments (``training.experiments.versus_base``): per box kind, each decoder minus the
    base over all test groups, and what happens on the data set the base does worst on and best on."""
    bullets = []
    if versus is None or not len(versus):
        return as_markdown(["No comparison decoder was trained (compare_decoders = False)."])
    for kind, part in versus.groupby("boxes", sort=False):
        for _, r in part[part["dataset"] == "all"].iterrows():
            d = Difference(int(r["groups"]), float(r["change"]), float(r["lo"]), float(r["hi"]))
            bullets.append(_compare(r["variant"], "base", d, f"Test boxes {kind}, Dice over all test groups",
                                    digits=3))
        per = part[part["dataset"] != "all"]
        if len(per):
            base = per.groupby("dataset")["base"].first()
            for word, dataset in (("worst", base.idxmin()), ("best", base.idxmax())):
                sel = per[per["dataset"] == dataset]
                changes = ", ".join(f"{v} {c:+.3f}" for v, c in zip(sel["variant"], sel["change"]))
                bullets.append(f"Test boxes {kind}: the base does {word} on {dataset} ({base[dataset]:.3f} Dice); "
                               f"change per decoder: {changes}.")
    return as_markdown(bullets)


def _pct(value: float) -> str:
    return f"{value * 100:g}%"


def _task_curve(sweep, model: str, axis: str):
    """Mean over tasks of each task's mean DSC, per value of ``axis`` (the other axis at 0), for ``model``."""
    other = "shift" if axis == "noise" else "noise"
    rows = sweep[(sweep["model"] == model) & (sweep[other] == 0)]
    return rows.groupby([axis, "task_label"])["dsc"].mean().groupby(axis).mean()


def _per_target(sweep, model: str, noise: float, shift: float = 0.0):
    rows = sweep[(sweep["model"] == model) & (sweep["noise"] == noise) & (sweep["shift"] == shift)]
    return rows.set_index(["dataset", "case", "volume", "image_key", "target", "instance"])["dsc"].sort_index()


def ideal_box_position(sweep) -> list[str]:
    """Where the paper's protocol, the ideal box, sits on notebook 08's curves of DSC (mean over tasks of each
    task's mean) against the annotator's noise and shift (``annotator.annotator_sweep`` rows), per model."""
    from .figures import MODEL_NAMES

    bullets = []
    for model in dict.fromkeys(sweep["model"]):
        name = MODEL_NAMES.get(model, model)
        curve = _task_curve(sweep, model, "noise")
        if 0.0 not in curve.index or len(curve) < 2:
            bullets.append(f"{name}: the sweep has no ideal box and another noise level to compare.")
            continue
        ideal = float(curve.loc[0.0])
        rank = int((curve > ideal + EQUAL).sum()) + 1
        where = ("the top of the curve" if rank == 1 else
                 f"not the top: noise {_pct(float(curve.idxmax()))} scores higher, {curve.max():.3f}")
        per_task = sweep[(sweep["model"] == model) & (sweep["shift"] == 0)].groupby(["task_label", "noise"])["dsc"]
        per_task = per_task.mean().unstack("noise")
        top = int((per_task[0.0] >= per_task.max(axis=1) - EQUAL).sum())
        bullets.append(f"{name}: the paper's protocol (the ideal box, noise 0) gives mean DSC {ideal:.3f} over "
                       f"{len(per_task)} task(s), rank {rank} of {len(curve)} noise levels ({where}); DSC by noise "
                       + ", ".join(f"{_pct(float(n))} {v:.3f}" for n, v in curve.items())
                       + f". The ideal box is the best noise level in {top} of {len(per_task)} task(s).")
        shifts = _task_curve(sweep, model, "shift")
        if len(shifts) > 1 and 0.0 in shifts.index:
            best = float(shifts.idxmax())
            text = ", ".join(f"{_pct(float(s))} {v:.3f}" for s, v in shifts.items())
            verdict = ("the ideal box scores best" if best == 0 or shifts.max() - shifts.loc[0.0] < EQUAL else
                       f"a box moved {'outward' if best > 0 else 'inward'} by {_pct(abs(best))} scores higher than "
                       f"the ideal box ({shifts.max():.3f} vs {shifts.loc[0.0]:.3f})")
            bullets.append(f"{name}, every side shifted (noise 0): DSC by shift {text}; {verdict}.")
    return bullets


def sweep_findings(sweep, seed: int = 0) -> list[str]:
    """Notebook 08's annotator sweep (``annotator.annotator_sweep`` rows of both models): ``ideal_box_position``,
    the loss per target from the ideal box to the loosest noise, and fine-tuned against base at both ends."""
    from .figures import MODEL_NAMES

    bullets = ideal_box_position(sweep)
    models = list(dict.fromkeys(sweep["model"]))
    loosest = float(sweep.loc[sweep["shift"] == 0, "noise"].max())
    if loosest > 0:
        for model in models:
            d = paired_difference(_per_target(sweep, model, 0.0), _per_target(sweep, model, loosest), seed)
            bullets.append(_compare(f"noise {_pct(loosest)}", "the ideal box", d,
                                    f"{MODEL_NAMES.get(model, model)}, DSC per target (each side placed with sd "
                                    f"{_pct(loosest)} of the object's size, against the paper's box)"))
    if {"base", "finetuned"} <= set(models):
        for noise in sorted({0.0, loosest}):
            d = paired_difference(_per_target(sweep, "base", noise), _per_target(sweep, "finetuned", noise), seed)
            bullets.append(_compare("fine-tuned", "base", d, f"Noise {_pct(noise)}, DSC per target"))
    return bullets


def calibration_findings(summary, flags, sweep=None) -> list[str]:
    """Notebook 08's calibration (``calibration.calibration_summary`` rows, ``calibration.flag_table``)."""
    from .evaluation.calibration import LIKELY_WRONG_DSC
    from .figures import MODEL_NAMES

    bullets = []
    for _, r in summary.iterrows():
        gap = r["mean_predicted_iou"] - r["mean_measured_iou"]
        confidence = "over-confident" if gap > 0 else "under-confident" if gap < 0 else "exact on average"
        auc = (f"AUROC {r['failure_auroc']:.3f} for ranking the {int(r['flag_failures'])} failure(s) (DSC < "
               f"{LIKELY_WRONG_DSC:g}) first" if not math.isnan(r["failure_auroc"]) else
               f"no AUROC ({int(r['flag_failures'])} failure(s) of {int(r['targets'])}: a class is empty)")
        bullets.append(f"{r['model']}: ECE {r['ece']:.3f} over {int(r['targets'])} masks; mean predicted IoU "
                       f"{r['mean_predicted_iou']:.3f} against measured {r['mean_measured_iou']:.3f} ({confidence} "
                       f"by {abs(gap):.3f}); {auc}.")
    if sweep is not None:
        for model, part in sweep.groupby("model", sort=False):
            above = part[part["predicted_iou"] > 1]
            if len(above):
                bullets.append(f"{MODEL_NAMES.get(model, model)}: {len(above)} of {len(part)} predicted IoUs "
                               f"exceed 1 (up to "
                               f"{above['predicted_iou'].max():.3f}): the IoU head is unbounded.")
            else:
                bullets.append(f"{MODEL_NAMES.get(model, model)}: no predicted IoU of {len(part)} exceeds 1 (highest "
                               f"{part['predicted_iou'].max():.3f}).")
    for _, r in flags.iterrows():
        of = (f"{r['flagged and failed']} of them failed (DSC < {LIKELY_WRONG_DSC:g})" if r["flagged"] else
              "none to check")
        bullets.append(f"{r['model']}: the quality flag marks {r['flagged']} of {r['masks']} masks, {of}; it lets "
                       f"{r['failures not flagged']} of {r['failures']} failure(s) through unflagged.")
    return bullets


def correction_findings(frame, need, goal_dsc: float, seed: int = 0) -> list[str]:
    """Notebook 08's correction loop (``correction.correction_loop`` rows, ``correction.clicks_to_reach``)."""
    from .figures import MODEL_NAMES

    bullets = []
    for model, part in frame.groupby("model", sort=False):
        name = MODEL_NAMES.get(model, model)
        by_round = part.groupby("round")["dsc"].mean()
        keys = ["dataset", "case", "volume", "image_key", "target", "instance"]
        first = part[part["round"] == 0].set_index(keys)["dsc"].sort_index()
        last = part[part["round"] == part["round"].max()].set_index(keys)["dsc"].sort_index()
        clicked = part[part["round"] == min(1, int(part["round"].max()))].set_index(keys)["dsc"].sort_index()
        bullets.append(f"{name}: mean DSC over {len(first)} targets by round "
                       + ", ".join(f"{int(r)}: {v:.3f}" for r, v in by_round.items()) + ".")
        bullets.append(_compare("one click", "the box alone", paired_difference(first, clicked, seed),
                                f"{name}, first corrective click, DSC per target"))
        bullets.append(_compare(f"{int(part['round'].max())} clicks", "the box alone",
                                paired_difference(first, last, seed), f"{name}, end of the loop, DSC per target"))
        mine = need[need["model"] == model]
        clicks = mine["clicks_to_goal"]
        reached = clicks[np.isfinite(clicks)]
        median = f"; median {reached.median():g} click(s) among those that reach it" if len(reached) else ""
        bullets.append(f"{name}: DSC {goal_dsc:g} reached with the box alone by {int((clicks == 0).sum())} of "
                       f"{len(mine)} targets, after clicks by {int(((clicks > 0) & np.isfinite(clicks)).sum())}, "
                       f"never within {int(mine['rounds'].max())} clicks by {int((~np.isfinite(clicks)).sum())}"
                       f"{median}.")
    return bullets


def beyond_findings(pinned, sweep, calibration, flags, correction, need, goal_dsc: float, seed: int = 0) -> str:
    """Notebook 08: pinned prompts replayed, where the ideal box sits among human-like ones, how well the
    predicted IoU knows a mask's quality, and what corrective clicks buy, from this run's tables."""
    from .figures import MODEL_NAMES

    bullets = []
    same = int(pinned["replay identical"].sum())
    bullets.append(f"Pinned prompts: replaying each model's prompts file reproduced its metrics exactly for {same} "
                   f"of {len(pinned)} model(s) ("
                   + "; ".join(f"{MODEL_NAMES.get(r['model'], r['model'])}: {r['targets']} targets, "
                               f"{r['prompted slices']} prompted slices, largest |DSC difference| "
                               f"{r['max |dDSC|']:.3g}" for _, r in pinned.iterrows())
                   + "); " + ("every file holds the base model's boxes." if pinned["same boxes as base"].all()
                              else "the models' files hold different boxes."))
    bullets += sweep_findings(sweep, seed)
    bullets += calibration_findings(calibration, flags, sweep)
    bullets += correction_findings(correction, need, goal_dsc, seed)
    return as_markdown(bullets)
