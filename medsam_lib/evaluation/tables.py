"""Tables 1 (3D tasks) and 2 (2D tasks) in the paper's layout, from ``metrics.csv`` frames.

One row per paper task (target, modality) with data in the profile: DSC and NSD (%) of the base and
the fine-tuned model with bootstrap 95% CIs, the improvement with a paired Wilcoxon signed-rank
p-value (>= 5 cases), and the paper's published SAM and MedSAM values beside ours. A task's value
is the mean over its test *cases* (each case first averaged over its targets: instances, volumes,
images), so the bootstrap and the test resample and pair cases, the unit of the 80/20 split. A task
with data in the profile but no test case is listed as such, never as zero; targets that are no
paper task follow (marked *) where they have test cases. The published values are read at run time from
``<shared>/paper/table1_3d.csv`` / ``table2_2d.csv`` (``medsam_lib.shared.shared_dir()``); when that
folder is absent the published columns say "unavailable" (nothing is typed in here).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.manifest_schema import PAPER_TASKS
from ..fileio import atomic_write_text
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


def per_case(frame):
    """Mean DSC/NSD per (task label, case)."""
    frame = frame.copy()
    frame["task_label"] = [t if t else f"{tg} ({m})" for t, tg, m in zip(frame["task"], frame["target"],
                                                                         frame["modality"])]
    return frame.groupby(["task_label", "case"], sort=True)[["dsc", "nsd"]].mean()


def task_rows(index, base, finetuned=None, split: str = "test", seed: int = 0):
    """The long (numeric) table: one row per task label present in ``index`` (the store's index)."""
    import pandas as pd

    idx = index.copy()
    idx["task_label"] = [t if t else f"{tg} ({m})" for t, tg, m in zip(idx["task"], idx["target"], idx["modality"])]
    idx["dimensionality"] = np.where(idx["n_slices"] > 1, "3D", "2D")
    base_cases = per_case(base) if len(base) else None
    ft_cases = per_case(finetuned) if finetuned is not None and len(finetuned) else None
    rows = []
    for label, group in idx.groupby("task_label", sort=False):
        paper_task = bool(group["task"].iloc[0])
        dim = group["dimensionality"].mode().iloc[0]
        row = {"task": label, "paper_task": paper_task, "table": paper_table_of(label if paper_task else "", dim),
               "dimensionality": dim, "stand_in": bool(group["stand_in"].astype(str).eq("True").any()),
               "synthetic": bool(group["synthetic"].astype(str).eq("True").any()),
               "cases_in_profile": int(group["case"].nunique())}
        in_split = group if split == "all" else group[group["split"] == split]
        row["n_cases"] = int(in_split["case"].nunique())
        for name, cases in (("base", base_cases), ("finetuned", ft_cases)):
            have = cases is not None and label in cases.index.get_level_values(0)
            for metric in ("dsc", "nsd"):
                vals = cases.loc[label][metric].to_numpy() * 100 if have else np.array([])
                row[f"{metric}_{name}"] = float(vals.mean()) if vals.size else math.nan
                lo, hi = bootstrap_ci(vals, seed) if vals.size else (math.nan, math.nan)
                row[f"{metric}_{name}_lo"], row[f"{metric}_{name}_hi"] = lo, hi
        for metric in ("dsc", "nsd"):
            row[f"{metric}_improve"] = row[f"{metric}_finetuned"] - row[f"{metric}_base"]
            if base_cases is not None and ft_cases is not None and label in base_cases.index.get_level_values(0) \
                    and label in ft_cases.index.get_level_values(0):
                a = base_cases.loc[label][metric]
                b = ft_cases.loc[label][metric].reindex(a.index)
                row[f"{metric}_p"] = wilcoxon_p(a.to_numpy(), b.to_numpy())
            else:
                row[f"{metric}_p"] = math.nan
        rows.append(row)
    frame = pd.DataFrame(rows)
    for table in (1, 2):
        pub = published(table)
        sel = frame["table"] == table
        for col in ("dsc_sam", "dsc_medsam", "nsd_sam", "nsd_medsam"):
            frame.loc[sel, f"paper_{col}"] = [pub[col].get(t, math.nan) if pub is not None else math.nan
                                              for t in frame.loc[sel, "task"]]
        frame.loc[sel, "published_available"] = pub is not None
    ours = frame["dsc_finetuned"].where(frame["dsc_finetuned"].notna(), frame["dsc_base"])
    frame["dsc_vs_medsam"] = ours - frame["paper_dsc_medsam"]
    ours = frame["nsd_finetuned"].where(frame["nsd_finetuned"].notna(), frame["nsd_base"])
    frame["nsd_vs_medsam"] = ours - frame["paper_nsd_medsam"]
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


def formatted(long, table: int, finetuned_available: bool, published_available: bool):
    """The paper-layout table of one table number, as strings (for Markdown and LaTeX)."""
    import pandas as pd

    part = long[long["table"] == table]
    rows = []
    for _, r in part.iterrows():
        if not r["paper_task"] and r["n_cases"] == 0:
            continue  # other targets are listed only where they were scored
        name = r["task"] + (" †" if r["stand_in"] else "") + ("" if r["paper_task"] else " *")
        cells = {"Task": name, "Cases": str(r["n_cases"])}
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
            if not r["paper_task"]:
                cells[f"{title} SAM (paper)"] = cells[f"{title} MedSAM (paper)"] = cells[f"{title} ours-MedSAM"] = ""
            elif not published_available:
                cells[f"{title} SAM (paper)"] = cells[f"{title} MedSAM (paper)"] = "unavailable"
                cells[f"{title} ours-MedSAM"] = ""
            else:
                cells[f"{title} SAM (paper)"] = _cell(r[f"paper_{metric}_sam"])
                cells[f"{title} MedSAM (paper)"] = _cell(r[f"paper_{metric}_medsam"])
                cells[f"{title} ours-MedSAM"] = "" if empty else _cell(r[f"{metric}_vs_medsam"])
        rows.append(cells)
    scored = part[(part["n_cases"] > 0) & part["paper_task"]]
    if len(scored):
        avg = {"Task": f"Average ({len(scored)} paper tasks with test cases)", "Cases": str(int(scored["n_cases"].sum()))}
        for metric, title in (("dsc", "DSC"), ("nsd", "NSD")):
            avg[f"{title} base"] = _cell(scored[f"{metric}_base"].mean())
            avg[f"{title} fine-tuned"] = _cell(scored[f"{metric}_finetuned"].mean()) if finetuned_available \
                else "not available"
            avg[f"{title} +"] = _cell(scored[f"{metric}_improve"].mean()) if finetuned_available else ""
            avg[f"{title} p"] = ""
            if published_available:
                avg[f"{title} SAM (paper)"] = _cell(scored[f"paper_{metric}_sam"].mean())
                avg[f"{title} MedSAM (paper)"] = _cell(scored[f"paper_{metric}_medsam"].mean())
                avg[f"{title} ours-MedSAM"] = _cell(scored[f"{metric}_vs_medsam"].mean())
            else:
                avg[f"{title} SAM (paper)"] = avg[f"{title} MedSAM (paper)"] = "unavailable"
                avg[f"{title} ours-MedSAM"] = ""
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


def write_tables(long, out_dir, captions: dict, finetuned_available: bool) -> dict:
    """CSV (numeric, all tables), and per table Markdown + LaTeX; returns {name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"csv": atomic_write_text(out_dir / "tables_1_2.csv", long.to_csv(index=False))}
    for table in (1, 2):
        pub_ok = bool(long.loc[long["table"] == table, "published_available"].all()) if len(long) else False
        frame = formatted(long, table, finetuned_available, pub_ok)
        name = f"table{table}_{'3d' if table == 1 else '2d'}"
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
