"""The tolerance nbval applies to committed notebook outputs (tests/nbval_tolerance.py)."""
from __future__ import annotations

import pytest

from nbval_tolerance import TolerantText, tolerant_equal

# The row that failed CI on another machine (issue 15), and its committed twin.
COMMITTED = "| myocardium (MR) * | 1 | 40.18 | 55.27 | 15.09 | n<5 | 64.30 | 61.44 | -2.86 | n<5 |"
OTHER_MACHINE = "| myocardium (MR) * | 1 | 40.18 | 55.28 | 15.09 | n<5 | 64.30 | 61.46 | -2.84 | n<5 |"


@pytest.mark.parametrize("ref, test", [
    (COMMITTED, OTHER_MACHINE),
    ("best validation Dice 0.9123 at step 20", "best validation Dice 0.9121 at step 20"),
    # pandas pads columns to the widest number: the padding moves, the words do not
    ("   dsc\n0  9.99\n1  0.50", "    dsc\n0  10.01\n1   0.50"),
    ("margin 0.835 0.919", "margin 0.836 0.918"),
    ("T1 DSC 80.14", "T1 DSC 80.20"),
])
def test_float_level_differences_pass(ref, test):
    assert tolerant_equal(ref, test)
    assert not (TolerantText(ref) != test)  # what nbval evaluates


@pytest.mark.parametrize("ref, test, why", [
    (COMMITTED, COMMITTED.replace("55.27", "56.27"), "a table value moved by 1 point"),
    ("best validation Dice 0.9123", "best validation Dice 0.9023", "a Dice moved by 0.01"),
    ("76 computed, 0 copied", "75 computed, 0 copied", "a count"),
    ("163 targets", "163 target", "a word"),
    ("n 3 | dsc 0.75", "n 3 | dsc nan", "NaN instead of a number"),
    ("dsc 0.75 0.80", "dsc 0.75", "a number disappeared"),
    ("best.pt from step 20", "best.pt from step 10", "an integer step"),
    ("margin 0.835", "margin 0.860", "3 decimals, 0.025 apart"),
    ("T1 DSC 80.14", "T1 DSC -80.14", "the sign"),
])
def test_real_changes_fail(ref, test, why):
    assert not tolerant_equal(ref, test), why
    assert TolerantText(ref) != test


def test_the_tolerance_scales_with_the_printed_precision():
    assert tolerant_equal("0.9123", "0.9133") and not tolerant_equal("0.9123", "0.9150")
    assert tolerant_equal("97.5", "97.9") and not tolerant_equal("97.5", "98.9")
    # 0.2% of the magnitude when that is larger than 10 units of the last digit
    assert tolerant_equal("1234.56", "1236.90") and not tolerant_equal("1234.56", "1240.00")


def test_nbval_compares_sanitised_outputs_with_the_tolerance(pytestconfig):
    from nbval.plugin import IPyNbCell

    assert getattr(IPyNbCell.sanitize, "_tolerant", False), "nbval_tolerance is not loaded (pyproject addopts)"


def _widget_bar(text):
    return {"output_type": "display_data",
            "data": {"text/plain": text, "application/vnd.jupyter.widget-view+json": {"model_id": "abc"}}}


@pytest.mark.parametrize("output, progress", [
    (_widget_bar("box sweep (base):   0%|          | 0/8 [00:00<?, ?target/s]"), True),
    ({"output_type": "stream", "name": "stderr",
      "text": "predict:  50%|#####     | 4/8 [00:01<00:01, 3.1it/s]\rpredict: 100%|##########| 8/8 [00:02<00:00]\n"},
     True),
    ({"output_type": "stream", "name": "stdout", "text": "predict: 100%|##########| 8/8\n"}, False),
    ({"output_type": "stream", "name": "stderr", "text": "UserWarning: something\n"}, False),
    ({"output_type": "display_data", "data": {"text/plain": "50%|#####| of the targets"}}, False),
    ({"output_type": "execute_result", "data": {"text/plain": "   dsc\n0  0.99"}}, False),
])
def test_progress_bars_are_recognised(output, progress):
    from nbval_tolerance import is_progress

    assert is_progress(output) is progress


def test_a_bar_present_on_one_side_only_compares_equal():
    """A cell that computed (bar shown) and one that reused a result (no bar) compare the same."""
    nbformat = pytest.importorskip("nbformat")
    from nbval.plugin import IPyNbCell

    import nbval_tolerance

    nbval_tolerance.pytest_configure(None)
    result = nbformat.from_dict({"output_type": "execute_result", "data": {"text/plain": "8 targets"},
                                 "metadata": {}, "execution_count": 1})
    bar = nbformat.from_dict({**_widget_bar("predict:   0%|          | 0/8 [00:00<?, ?it/s]"), "metadata": {}})

    class Parent:
        skip_compare = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                        nbval_tolerance.WIDGET_VIEW)

        def sanitize(self, text):
            return text

    class Cell:
        parent = Parent()
        colors = type("C", (), {"FAIL": "", "OKBLUE": "", "ENDC": "", "OKGREEN": ""})()
        sanitize = Parent.sanitize
        comparison_traceback: list = []

        def format_output_compare(self, key, ref, test):
            self.comparison_traceback.append(key)

    cell = Cell()
    assert IPyNbCell.compare_outputs(cell, [bar, result], [result])
    assert IPyNbCell.compare_outputs(cell, [result], [bar, result])
    other = nbformat.from_dict({"output_type": "execute_result", "data": {"text/plain": "7 targets"},
                                "metadata": {}, "execution_count": 1})
    assert not IPyNbCell.compare_outputs(cell, [bar, other], [result])
