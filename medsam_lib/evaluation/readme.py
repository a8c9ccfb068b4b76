"""The README's results section: a profile's Tables 1-2 under every named test-box protocol,
rendered from the long tables notebook 05 writes (``tables_1_2.csv`` for the tight boxes,
``tables_1_2_<name>.csv`` for the others; ``tables.write_tables``).

    python -m medsam_lib tables --profile cohorts --readme README.md [--tables DIR]

replaces what lies between ``<!-- results:cohorts:begin -->`` and ``<!-- results:cohorts:end -->``
in README.md (atomically) with ``render`` of those CSVs; the markers must be there, once each, and
every protocol's CSV must exist (else a MedSAMError: exit 2). The section is a pure function of the
CSVs, so a test can check that a committed README matches committed tables.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..fileio import MedSAMError, atomic_write_text
from .options import TEST_BOX_WORDS, TEST_BOXES
from .tables import _cell, _p

COLUMNS = ["Table", "Task", "Cases (groups)", "DSC base", "DSC fine-tuned", "DSC p", "NSD base", "NSD fine-tuned",
           "NSD p", "NSD slab base", "NSD slab fine-tuned", "DSC MedSAM (paper)", "NSD MedSAM (paper)"]


def markers(profile: str) -> tuple[str, str]:
    return f"<!-- results:{profile}:begin -->", f"<!-- results:{profile}:end -->"


def csv_name(test_boxes: str) -> str:
    return "tables_1_2.csv" if test_boxes == "tight" else f"tables_1_2_{test_boxes}.csv"


def read_longs(tables_dir) -> dict:
    """{test-box protocol: long table} for every protocol of ``options.TEST_BOXES``; a missing CSV is an error."""
    import pandas as pd

    tables_dir = Path(tables_dir)
    missing = [csv_name(n) for n in TEST_BOXES if not (tables_dir / csv_name(n)).is_file()]
    if missing:
        raise MedSAMError(f"{tables_dir}: no {', '.join(missing)}; run notebook 05 (both test-box protocols, "
                          "chain.run_test_boxes) to write them first")
    longs = {}
    for name in TEST_BOXES:
        path = tables_dir / csv_name(name)
        frame = pd.read_csv(path, keep_default_na=True)
        needed = {"table", "task", "paper_task", "stand_in", "n_cases", "dsc_base", "nsd_base", "dsc_finetuned"}
        if needed - set(frame.columns):
            raise MedSAMError(f"{path}: not a long table of tables.task_rows (missing {sorted(needed - set(frame.columns))})")
        longs[name] = frame
    return longs


def _num(row, column: str) -> float:
    value = row.get(column, math.nan)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _ci(row, column: str) -> str:
    return _cell(_num(row, column), _num(row, f"{column}_lo"), _num(row, f"{column}_hi"), digits=1)


def _true(value) -> bool:
    return str(value) in ("True", "true", "1")


def render_table(long) -> str:
    """One protocol's Markdown table: every scored task (n_cases > 0) of Tables 1 and 2."""
    has_ft = bool(long["dsc_finetuned"].notna().any())
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    empty = []
    for _, r in long.sort_values("table", kind="stable").iterrows():
        paper_task = _true(r["paper_task"])
        name = str(r["task"]) + (" †" if _true(r["stand_in"]) else "") + ("" if paper_task else " *")
        if int(r["n_cases"]) == 0:
            if paper_task:
                empty.append(name)
            continue
        groups = _num(r, "n_groups")
        cells = [str(int(r["table"])), name, f"{int(r['n_cases'])} ({int(r['n_cases']) if math.isnan(groups) else int(groups)})",
                 _ci(r, "dsc_base"), _ci(r, "dsc_finetuned") if has_ft else "not available",
                 _p(_num(r, "dsc_p")) if has_ft else "", _ci(r, "nsd_base"),
                 _ci(r, "nsd_finetuned") if has_ft else "not available", _p(_num(r, "nsd_p")) if has_ft else "",
                 _ci(r, "nsd_slab_base"), _ci(r, "nsd_slab_finetuned") if has_ft else "",
                 _cell(_num(r, "paper_dsc_medsam"), digits=1), _cell(_num(r, "paper_nsd_medsam"), digits=1)]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    if empty:
        text += f"\nPaper tasks with data here but no test case: {', '.join(empty)}.\n"
    return text


def render(longs: dict, profile: str) -> str:
    """The section between the markers (markers excluded), from {test-box protocol: long table}."""
    parts = [f"<!-- written by `python -m medsam_lib tables --profile {profile} --readme README.md` from "
             f"results/{profile}/tables/tables_1_2*.csv; edit those, not this -->", ""]
    for name in TEST_BOXES:
        if name not in longs:
            raise MedSAMError(f"results section of {profile!r}: no table for test boxes {name!r}")
        parts += [f"**Test boxes '{name}'**: {TEST_BOX_WORDS[name]}.", "", render_table(longs[name])]
    parts += ["DSC and NSD in %, mean over test cases (images or volumes) [95% CI: bootstrap resampling whole "
              "groups, the split unit: a patient, an ultrasound acquisition's frames, a child's two eyes]; "
              "Cases (groups): how many of each; p: paired Wilcoxon signed-rank test of base vs fine-tuned over "
              "group means ('n<5': fewer than 5 groups). NSD at 1 mm (1 curated pixel where the file has no "
              "spacing); for 2D tasks 'NSD' is the true contour NSD and 'NSD slab' scores the 2D mask as a "
              "one-slice slab (the released LiteMedSAM evaluation), the reading comparable with the paper's "
              "published NSD. Paper columns: published MedSAM (ViT-B, the paper's own test sets). † stand-in data "
              "set; * a target that is no paper task. Full tables with captions: notebook 05 and the Markdown "
              "files beside the CSVs.", ""]
    return "\n".join(parts)


def replace_section(text: str, profile: str, body: str, source: str = "README") -> str:
    """``text`` with what lies between the profile's markers replaced by ``body``."""
    begin, end = markers(profile)
    for marker in (begin, end):
        count = text.count(marker)
        if count != 1:
            raise MedSAMError(f"{source}: marker {marker} found {count} times (needs exactly once, and "
                              f"{begin} before {end}); add the two marker lines where the results go")
    head, rest = text.split(begin)
    if end not in rest:
        raise MedSAMError(f"{source}: {end} comes before {begin}; put the begin marker first")
    _, tail = rest.split(end)
    return f"{head}{begin}\n{body.rstrip()}\n{end}{tail}"


def section(text: str, profile: str, source: str = "README") -> str:
    """What lies between the profile's markers now (for the check that it matches ``render``)."""
    begin, end = markers(profile)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise MedSAMError(f"{source}: no single {begin} ... {end} section")
    return text.split(begin)[1].split(end)[0].strip("\n")


def update_readme(readme, tables_dir, profile: str) -> Path:
    """Render ``tables_dir``'s CSVs into ``readme`` between the profile's markers (atomic write)."""
    readme = Path(readme)
    if not readme.is_file():
        raise MedSAMError(f"{readme}: no such file (give the README to update with --readme)")
    text = readme.read_text(encoding="utf-8")
    replace_section(text, profile, "", str(readme))  # missing markers are refused before the tables are read
    body = render(read_longs(tables_dir), profile)
    return atomic_write_text(readme, replace_section(text, profile, body, str(readme)))
