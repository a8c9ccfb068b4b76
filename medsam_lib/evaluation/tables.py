"""Tables 1 (3D tasks) and 2 (2D tasks) in the paper's layout, from ``metrics.csv`` frames.

One row per paper task (target, modality) with data in the profile: DSC and NSD (%) of the base and
the fine-tuned model with 95% CIs, the improvement with a paired Wilcoxon signed-rank p-value, and
the paper's published SAM and MedSAM values beside ours. Units:

- a *case* is one scored image or volume (the index's ``dataset``/``case``/``volume``: a carotid
  frame, one eye of a CHASE_DB1 child, an MR volume), its value the mean over its targets;
- a *group* is the resampling unit, the split unit the manifest names (the index's ``dataset``/
  ``case``: a whole carotid acquisition, a whole child; the image or volume itself elsewhere), or a
  ``group`` column of the metrics frame when it has one.

A task's value is the mean over its test cases (as the paper's mean over test images); its CI
is a group bootstrap (whole groups resampled, ``group_bootstrap_ci``), and the Wilcoxon test pairs
group means (>= 5 groups). Where every group holds one case this is the ordinary case bootstrap.
Table 2 also carries the NSD of the same predictions scored as one-slice slabs (``nsd_slab_*``, the
released LiteMedSAM evaluation's 2D NSD), the reading comparable with the paper's published 2D NSD.
A task with data in the profile but no test case is listed as such, never as zero; targets that are
no paper task follow (marked *) where they have test cases. The published values are read at run
time from ``<shared>/paper/table1_3d.csv`` / ``table2_2d.csv`` (``medsam_lib.shared.shared_dir()``);
when that folder is absent the published columns say "unavailable" (nothing is typed in here).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.manifest_schema import PAPER_TASKS
from ..fileio import MedSAMError, atomic_write_text
from ..shared import shared_dir

N_TABLE1 = 21  # PAPER_TASKS[:21] are Table 1 (3D), the rest Table 2 (2D)
PUBLISHED_FILES = {1: "table1_3d.csv", 2: "table2_2d.csv"}
MIN_CASES_TEST = 5
BOOTSTRAP = 2000


def paper_table_of(task: str, dimensionality: str = "3D") -> int:
    if task in PAPER_TASKS:
        return 1 if PAPER_TASKS.index(task) < N_TABLE1 else 2
    return 1 if dimensionality == "3D" else 2


def published(table: int):
    """The paper's Table 1 or 2 (values in %) indexed by "Target (Modality)", or None when
    ``<shared>/paper`` is absent."""
    import pandas as pd

    path = shared_dir() / "paper" / PUBLISHED_FILES[table]
    if not path.is_file():
        return None
    frame = pd.read_csv(path, keep_default_na=False)
    frame = frame[frame["target"] != "Average"].copy()
    frame["task"] = frame["target"] + " (" + frame["modality"] + ")"
    return frame.set_index("task")[["dsc_sam", "dsc_medsam", "nsd_sam", "nsd_medsam"]].astype(float)


def bootstrap_ci(values, seed: int, n: int = BOOTSTRAP, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded); (nan, nan) for fewer than 2 values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n, values.size))].mean(axis=1)
    return tuple(float(q) for q in np.quantile(means, [(1 - level) / 2, (1 + level) / 2]))


def group_bootstrap_ci(values, groups, seed: int, n: int = BOOTSTRAP, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the mean of ``values`` resampling whole ``groups`` (seeded): each of ``n`` draws
    picks as many groups as there are, with replacement, and takes the mean of every value of the
    picked groups (a group picked twice counts twice). Groups are numbered in order of appearance, so
    with one value per group this is ``bootstrap_ci``, draw for draw. (nan, nan) under 2 groups."""
    import pandas as pd

    values = np.asarray(values, dtype=np.float64)
    codes, uniques = pd.factorize(pd.Series(list(groups), dtype=object))
    if len(codes) != values.size:
        raise MedSAMError(f"group bootstrap: {values.size} values but {len(codes)} group labels")
    if len(uniques) < 2:
        return math.nan, math.nan
    sums = np.bincount(codes, weights=values, minlength=len(uniques))
    counts = np.bincount(codes, minlength=len(uniques)).astype(np.float64)
    picks = np.random.default_rng(seed).integers(0, len(uniques), size=(n, len(uniques)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return tuple(float(q) for q in np.quantile(means, [(1 - level) / 2, (1 + level) / 2]))


def wilcoxon_p(a, b) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value; nan under MIN_CASES_TEST pairs; 1.0 when all
    differences are zero (scipy refuses that case)."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < MIN_CASES_TEST:
        return math.nan
    if np.allclose(a, b):
        return 1.0
    return float(wilcoxon(a, b).pvalue)


def task_labels(frame) -> list[str]:
    """The paper task of each row, or "target (modality)" for a target that is no paper task."""
    return [t if t else f"{tg} ({m})" for t, tg, m in zip(frame["task"], frame["target"], frame["modality"])]


def _column(frame, name: str):
    import pandas as pd

    return frame[name].astype(str) if name in frame else pd.Series("", index=frame.index)


def case_keys(frame):
    """(case, group) keys of each row (module docstring): case = dataset/case/volume, group =
    dataset/group where the frame has a ``group`` column, else dataset/case (the split unit)."""
    dataset, case = _column(frame, "dataset"), frame["case"].astype(str)
    key = dataset + "/" + case + "/" + _column(frame, "volume")
    group = dataset + "/" + (frame["group"].astype(str) if "group" in frame else case)
    return key, group


def per_case(frame):
    """Mean DSC/NSD per (task label, case) with the case's ``group`` (module docstring). A case in
    two groups is refused: a group must hold whole cases."""
    frame = frame.copy()
    frame["task_label"] = task_labels(frame)
    frame["case"], frame["group"] = case_keys(frame)
    spread = frame.groupby(["task_label", "case"])["group"].nunique()
    if (spread > 1).any():
        (label, case) = spread[spread > 1].index[0]
        raise MedSAMError(f"metrics of {label}: case {case} lies in {int(spread.max())} groups; a group holds whole "
                          "cases (check the frame's 'group' column)")
    values = frame.groupby(["task_label", "case"], sort=True)[["dsc", "nsd"]].mean()
    values["group"] = frame.groupby(["task_label", "case"], sort=True)["group"].first()
    return values


def per_group(cases):
    """``per_case`` values averaged per (task label, group): the pairs of the Wilcoxon test."""
    return cases.reset_index().groupby(["task_label", "group"], sort=True)[["dsc", "nsd"]].mean()


def _summary(cases, label: str, metric: str, seed: int) -> tuple[float, float, float]:
    """(mean over cases, CI low, CI high) in % of one task label, or nans when it has no case."""
    if cases is None or label not in cases.index.get_level_values(0):
        return math.nan, math.nan, math.nan
    part = cases.loc[label]
    values = part[metric].to_numpy() * 100
    return (float(values.mean()), *group_bootstrap_ci(values, part["group"].to_numpy(), seed))


def _paired_p(base, finetuned, label: str, metric: str) -> float:
    """Wilcoxon p over the group means both models scored."""
    if base is None or finetuned is None:
        return math.nan
    a, b = per_group(base), per_group(finetuned)
    if label not in a.index.get_level_values(0) or label not in b.index.get_level_values(0):
        return math.nan
    pairs = a.loc[label][[metric]].join(b.loc[label][[metric]], rsuffix="_ft", how="inner")
    return wilcoxon_p(pairs[metric].to_numpy(), pairs[f"{metric}_ft"].to_numpy())


def task_rows(index, base, finetuned=None, split: str = "test", seed: int = 0, slab: dict | None = None,
              test_boxes: str | None = None):
    """The long (numeric) table: one row per task label present in ``index`` (the store's index).

    ``base`` / ``finetuned``: metrics frames (``chain.score_and_write``); ``slab``: {"base": frame,
    "finetuned": frame} of the 2D targets scored as one-slice slabs (``chain.slab_frames``), which
    fills ``nsd_slab_*``; ``test_boxes``: the protocol's name, a column of every row (default: read
    from the frames' ``test_boxes`` column)."""
    import pandas as pd

    idx = index.copy()
    idx["task_label"] = task_labels(idx)
    idx["dimensionality"] = np.where(idx["n_slices"] > 1, "3D", "2D")
    idx["case_key"], idx["group_key"] = case_keys(idx)
    cases = {"base": per_case(base) if len(base) else None,
             "finetuned": per_case(finetuned) if finetuned is not None and len(finetuned) else None}
    slab = slab or {}
    slab_cases = {name: per_case(slab[name]) if slab.get(name) is not None and len(slab[name]) else None
                  for name in ("base", "finetuned")}
    if test_boxes is None and "test_boxes" in base and len(base):
        test_boxes = str(base["test_boxes"].iloc[0])
    rows = []
    for label, group in idx.groupby("task_label", sort=False):
        paper_task = bool(group["task"].iloc[0])
        dim = group["dimensionality"].mode().iloc[0]
        row = {"task": label, "paper_task": paper_task, "table": paper_table_of(label if paper_task else "", dim),
               "dimensionality": dim, "stand_in": bool(group["stand_in"].astype(str).eq("True").any()),
               "synthetic": bool(group["synthetic"].astype(str).eq("True").any()),
               "test_boxes": test_boxes or "",
               "cases_in_profile": int(group["case_key"].nunique())}
        in_split = group if split == "all" else group[group["split"] == split]
        row["n_cases"] = int(in_split["case_key"].nunique())
        row["n_groups"] = int(in_split["group_key"].nunique())
        for name in ("base", "finetuned"):
            for metric in ("dsc", "nsd"):
                mean, lo, hi = _summary(cases[name], label, metric, seed)
                row[f"{metric}_{name}"], row[f"{metric}_{name}_lo"], row[f"{metric}_{name}_hi"] = mean, lo, hi
            mean, lo, hi = _summary(slab_cases[name], label, "nsd", seed)
            row[f"nsd_slab_{name}"], row[f"nsd_slab_{name}_lo"], row[f"nsd_slab_{name}_hi"] = mean, lo, hi
        for metric in ("dsc", "nsd"):
            row[f"{metric}_improve"] = row[f"{metric}_finetuned"] - row[f"{metric}_base"]
            row[f"{metric}_p"] = _paired_p(cases["base"], cases["finetuned"], label, metric)
        row["nsd_slab_improve"] = row["nsd_slab_finetuned"] - row["nsd_slab_base"]
        row["nsd_slab_p"] = _paired_p(slab_cases["base"], slab_cases["finetuned"], label, "nsd")
        rows.append(row)
    frame = pd.DataFrame(rows)
    for table in (1, 2):
        pub = published(table)
        sel = frame["table"] == table
        for col in ("dsc_sam", "dsc_medsam", "nsd_sam", "nsd_medsam"):
            frame.loc[sel, f"paper_{col}"] = [pub[col].get(t, math.nan) if pub is not None else math.nan
                                              for t in frame.loc[sel, "task"]]
        frame.loc[sel, "published_available"] = pub is not None
    for metric in ("dsc", "nsd", "nsd_slab"):
        ours = frame[f"{metric}_finetuned"].where(frame[f"{metric}_finetuned"].notna(), frame[f"{metric}_base"])
        frame[f"{metric}_vs_medsam"] = ours - frame[f"paper_{metric.split('_')[0]}_medsam"]
    frame["order"] = [PAPER_TASKS.index(t) if t in PAPER_TASKS else 100 for t in frame["task"]]
    return frame.sort_values(["table", "order", "task"]).drop(columns="order").reset_index(drop=True)


def _cell(mean, lo=math.nan, hi=math.nan, digits=2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = f"{mean:.{digits}f}"
    if not math.isnan(lo):
        text += f" [{lo:.1f}, {hi:.1f}]"
    return text


def _p(value) -> str:
    if value is None or math.isnan(value):
        return "n<5"
    return f"{value:.3f}" if value >= 0.001 else "<0.001"


def _counts(r) -> str:
    """"cases (groups)": test images or volumes, and the resampling groups they come from."""
    n = int(r["n_cases"])
    groups = r.get("n_groups", n)
    groups = n if groups is None or (isinstance(groups, float) and math.isnan(groups)) else int(groups)
    return f"{n} ({groups})"


def _has_slab(part) -> bool:
    return "nsd_slab_base" in part and bool(part["nsd_slab_base"].notna().any())


def formatted(long, table: int, finetuned_available: bool, published_available: bool):
    """The paper-layout table of one table number, as strings (for Markdown and LaTeX). Table 2 gets
    the slab NSD beside the true 2D NSD where ``long`` has it (``task_rows(slab=...)``); its
    "NSD ours-MedSAM" then compares the slab value, the one comparable with the paper."""
    import pandas as pd

    part = long[long["table"] == table]
    slab = table == 2 and _has_slab(part)
    gap_col = {"dsc": "dsc_vs_medsam", "nsd": "nsd_slab_vs_medsam" if slab else "nsd_vs_medsam"}
    rows = []
    for _, r in part.iterrows():
        if not r["paper_task"] and r["n_cases"] == 0:
            continue  # other targets are listed only where they were scored
        name = r["task"] + (" †" if r["stand_in"] else "") + ("" if r["paper_task"] else " *")
        cells = {"Task": name, "Cases (groups)": _counts(r)}
        empty = r["n_cases"] == 0
        for metric, title in (("dsc", "DSC"), ("nsd", "NSD")):
            if empty:
                cells[f"{title} base"] = "no test cases"
                cells[f"{title} fine-tuned"] = cells[f"{title} +"] = cells[f"{title} p"] = ""
            else:
                cells[f"{title} base"] = _cell(r[f"{metric}_base"], r[f"{metric}_base_lo"], r[f"{metric}_base_hi"])
                if finetuned_available:
                    cells[f"{title} fine-tuned"] = _cell(r[f"{metric}_finetuned"], r[f"{metric}_finetuned_lo"],
                                                         r[f"{metric}_finetuned_hi"])
                    cells[f"{title} +"] = _cell(r[f"{metric}_improve"])
                    cells[f"{title} p"] = _p(r[f"{metric}_p"])
                else:
                    cells[f"{title} fine-tuned"] = "not available"
                    cells[f"{title} +"] = cells[f"{title} p"] = ""
            if metric == "nsd" and slab:
                cells["NSD slab base"] = "" if empty else _cell(r["nsd_slab_base"], r["nsd_slab_base_lo"],
                                                                r["nsd_slab_base_hi"])
                cells["NSD slab fine-tuned"] = ("" if empty else "not available" if not finetuned_available else
                                                _cell(r["nsd_slab_finetuned"], r["nsd_slab_finetuned_lo"],
                                                      r["nsd_slab_finetuned_hi"]))
            gap = f"{title} {'slab ' if metric == 'nsd' and slab else ''}ours-MedSAM"
            if not r["paper_task"]:
                cells[f"{title} SAM (paper)"] = cells[f"{title} MedSAM (paper)"] = cells[gap] = ""
            elif not published_available:
                cells[f"{title} SAM (paper)"] = cells[f"{title} MedSAM (paper)"] = "unavailable"
                cells[gap] = ""
            else:
                cells[f"{title} SAM (paper)"] = _cell(r[f"paper_{metric}_sam"])
                cells[f"{title} MedSAM (paper)"] = _cell(r[f"paper_{metric}_medsam"])
                cells[gap] = "" if empty else _cell(r[gap_col[metric]])
        rows.append(cells)
    scored = part[(part["n_cases"] > 0) & part["paper_task"]]
    if len(scored):
        groups = int(scored["n_groups"].sum()) if "n_groups" in scored else int(scored["n_cases"].sum())
        avg = {"Task": f"Average ({len(scored)} paper tasks with test cases)",
               "Cases (groups)": f"{int(scored['n_cases'].sum())} ({groups})"}
        for metric, title in (("dsc", "DSC"), ("nsd", "NSD")):
            avg[f"{title} base"] = _cell(scored[f"{metric}_base"].mean())
            avg[f"{title} fine-tuned"] = _cell(scored[f"{metric}_finetuned"].mean()) if finetuned_available \
                else "not available"
            avg[f"{title} +"] = _cell(scored[f"{metric}_improve"].mean()) if finetuned_available else ""
            avg[f"{title} p"] = ""
            if metric == "nsd" and slab:
                avg["NSD slab base"] = _cell(scored["nsd_slab_base"].mean())
                avg["NSD slab fine-tuned"] = _cell(scored["nsd_slab_finetuned"].mean()) if finetuned_available \
                    else "not available"
            gap = f"{title} {'slab ' if metric == 'nsd' and slab else ''}ours-MedSAM"
            if published_available:
                avg[f"{title} SAM (paper)"] = _cell(scored[f"paper_{metric}_sam"].mean())
                avg[f"{title} MedSAM (paper)"] = _cell(scored[f"paper_{metric}_medsam"].mean())
                avg[gap] = _cell(scored[gap_col[metric]].mean())
            else:
                avg[f"{title} SAM (paper)"] = avg[f"{title} MedSAM (paper)"] = "unavailable"
                avg[gap] = ""
        rows.append(avg)
    return pd.DataFrame(rows)


def to_markdown(frame, caption: str = "") -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in frame.itertuples(index=False)]
    return (f"{caption}\n\n" if caption else "") + "\n".join(lines) + "\n"


def to_latex(frame, caption: str, label: str) -> str:
    def esc(text) -> str:
        text = str(text)
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("†", r"$^\dagger$"), ("<", r"$<$")):
            text = text.replace(a, b)
        return text

    cols = list(frame.columns)
    body = [" & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
    body += [" & ".join(esc(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    return "\n".join([r"\begin{table}[ht]", r"\centering", r"\scriptsize", f"\\caption{{{esc(caption)}}}",
                      f"\\label{{{label}}}", r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule",
                      *body, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def file_suffix(long) -> str:
    """"" for the tight test boxes (and tables without the column), else "_<test_boxes>"."""
    names = set(long["test_boxes"].astype(str)) - {"", "nan"} if "test_boxes" in long and len(long) else set()
    if len(names) > 1:
        raise MedSAMError(f"one table per test-box protocol; this one mixes {sorted(names)}")
    name = names.pop() if names else "tight"
    return "" if name == "tight" else f"_{name}"


def write_tables(long, out_dir, captions: dict, finetuned_available: bool) -> dict:
    """CSV (numeric, all tables), and per table Markdown + LaTeX; returns {name: path}. Files of the
    tight test boxes are ``tables_1_2.csv``, ``table1_3d.md`` ...; another protocol's carry its name
    (``tables_1_2_jittered.csv``, ``table1_3d_jittered.md`` ...), so both sit side by side."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = file_suffix(long)
    written = {"csv": atomic_write_text(out_dir / f"tables_1_2{suffix}.csv", long.to_csv(index=False))}
    for table in (1, 2):
        pub_ok = bool(long.loc[long["table"] == table, "published_available"].all()) if len(long) else False
        frame = formatted(long, table, finetuned_available, pub_ok)
        name = f"table{table}_{'3d' if table == 1 else '2d'}{suffix}"
        written[f"{name}.md"] = atomic_write_text(out_dir / f"{name}.md", to_markdown(frame, captions[table]))
        written[f"{name}.tex"] = atomic_write_text(out_dir / f"{name}.tex",
                                                   to_latex(frame, captions[table], f"tab:{name}"))
        written[f"{name}.csv"] = atomic_write_text(out_dir / f"{name}.csv", frame.to_csv(index=False))
    return written


def split_captions(captions: dict) -> tuple[str, dict]:
    """The sentences every caption shares, once, and what is each table's own: ``(shared, {table: own})``,
    so a notebook shows Tables 1 and 2 without repeating a long caption (the files keep the full one)."""
    import re

    sentences = {t: re.split(r"(?<=\.)\s+(?=[A-Z†*])", c.strip()) for t, c in captions.items()}
    common = [s for s in next(iter(sentences.values())) if all(s in other for other in sentences.values())]
    own = {t: " ".join(s for s in parts if s not in common) for t, parts in sentences.items()}
    return " ".join(common), own


def notebook_view(long, captions: dict, finetuned_available: bool) -> str:
    """Tables 1 and 2 as one Markdown text: each table under its own caption, the shared part once below."""
    shared, own = split_captions(captions)
    parts = []
    for table in (1, 2):
        pub_ok = bool(long.loc[long["table"] == table, "published_available"].all()) if len(long) else False
        parts.append(f"**{own[table]}**\n\n" + to_markdown(formatted(long, table, finetuned_available, pub_ok)))
    return "\n".join(parts) + (f"\n*Both tables:* {shared}\n" if shared else "")


CHOICE_NAMES = {"paper defaults": "paper defaults", "nsd_spacing": "NSD spacing", "slices": "GT slices counted",
                "nsd_2d": "2D NSD", "CT window": "CT window"}


def choice_table(effects):
    """``chain.choice_effects`` for reading: rows named "choice: setting (model)", columns "Table 1 (3D) DSC"
    instead of "T1 DSC" (which reads like an MR weighting)."""
    def row_name(r) -> str:
        name = CHOICE_NAMES.get(r["choice"], r["choice"])
        setting = str(r["setting"]).split(" (")[0]  # "[-160, 240] (official_code preset)" -> "[-160, 240]"
        return f"{name} ({r['model']})" if setting == "-" else f"{name}: {setting} ({r['model']})"

    def column_name(c: str) -> str:
        table, _, rest = c.partition(" ")
        number = table[1:]
        return f"Table {number} ({'3D' if number == '1' else '2D'}) {rest}"

    values = [c for c in effects.columns if c[:1] == "T" and c[1:2].isdigit()]
    frame = effects[values].rename(columns=column_name)
    frame.index = [row_name(r) for _, r in effects.iterrows()]
    frame.index.name = "choice (model)"
    return frame


def choice_caption(effects, long) -> str:
    """Why the choice table's "paper defaults" averages differ from Tables 1-2's Average rows: they are
    means over every scored task label (targets that are no paper task included), the tables' over paper
    tasks only. Computed from both, for the base model."""
    base = effects[(effects["choice"] == "paper defaults") & (effects["model"] == "base")]
    notes = []
    for table in (1, 2):
        scored = long[(long["table"] == table) & (long["n_cases"] > 0)]
        paper = scored[scored["paper_task"]]
        column = f"T{table} DSC"
        if not len(scored) or column not in base or not len(base):
            continue
        if len(scored) == len(paper):
            notes.append(f"Table {table}: paper tasks only, as in its Average row")
            continue
        notes.append(f"Table {table}: {len(scored)} labels ({len(paper)} paper tasks + {len(scored) - len(paper)} "
                     f"other targets), base DSC {float(base[column].iloc[0]):.2f} here vs "
                     f"{paper['dsc_base'].mean():.2f} in its Average row (paper tasks only)")
    return ("Mean DSC/NSD (%) over every scored task label of each table, targets that are no paper task "
            "included, one choice changed at a time; 'change' = difference from the paper defaults. "
            + ("; ".join(notes) + "." if notes else ""))
