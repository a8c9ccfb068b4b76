"""nbval with numbers compared within a stated tolerance (loaded by ``-p nbval_tolerance``, pyproject).

nbval compares a re-executed notebook's text outputs with the committed ones character by character
(after ``nbval_sanitize.cfg``). That is right for names, shapes, counts and which rows exist, and wrong
for numbers that come out of training or float reductions: another CPU, thread count or BLAS sums
in another order, a decoder trained for 30 steps ends a few ULPs away, and a table printed to two
decimals reads 55.28 instead of 55.27 (issue 15: CI failed on another machine for exactly that).

The rule, applied to every compared text output (stream text, text/plain, text/markdown, text/html):
- the text is split into numbers and the text between them;
- the text between numbers must be equal once runs of white space are collapsed (pandas pads columns
  to the widest number, so 9.99 -> 10.01 moves the padding);
- a number written without a decimal point (a count, an index, a size, a seed, n) must be equal;
- a number written with d decimals may differ by at most ``max(10 units of its last decimal,
  0.2% of its magnitude)``: 0.01 .. 0.11 points on a 0-100 table, 0.001 .. 0.002 on a Dice printed
  to 4 decimals. A real change of code or data moves these numbers by far more.

Anything else (a number that appears or disappears, NaN vs a number, another word) is a failure,
printed by nbval as before. ``tolerant_equal`` is the rule; tests/test_nbval_tolerance.py tests it.

Progress bars are not results: a tqdm bar (a widget display whose text is a bar, or a stderr stream of
bars only) is left out of the comparison on both sides, so a step that shows a bar when it computes and
none when it reuses a finished result compares equal either way (``is_progress``).
"""
from __future__ import annotations

import re

NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
PROGRESS_BAR = re.compile(r"\d+%\|[^|\n]*\|")  # tqdm: "box sweep (base):  40%|####      | 4/10 [...]"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
LAST_DIGIT_UNITS = 10
RELATIVE = 0.002


def _split(text: str) -> tuple[list[str], list[str]]:
    numbers = NUMBER.findall(text)
    between = [" ".join(part.split()) for part in NUMBER.split(text)]
    return numbers, between


def _decimals(token: str) -> int | None:
    mantissa = re.split(r"[eE]", token)[0]
    return len(mantissa.split(".")[1]) if "." in mantissa else None


def number_close(ref: str, test: str) -> bool:
    """Two number tokens: equal when written without a decimal point, else within the tolerance."""
    d_ref, d_test = _decimals(ref), _decimals(test)
    if d_ref is None or d_test is None:
        return ref.lstrip("+") == test.lstrip("+")
    a, b = float(ref), float(test)
    places = max(d_ref, d_test)
    exponent = re.split(r"[eE]", ref)
    scale = 10.0 ** int(exponent[1]) if len(exponent) == 2 else 1.0
    tolerance = max(LAST_DIGIT_UNITS * 10.0 ** -places * scale, RELATIVE * max(abs(a), abs(b)))
    return abs(a - b) <= tolerance


def tolerant_equal(ref, test) -> bool:
    """The comparison nbval makes between a committed output and a re-executed one."""
    if not (isinstance(ref, str) and isinstance(test, str)):
        return ref == test
    if ref == test:
        return True
    ref_numbers, ref_between = _split(ref)
    test_numbers, test_between = _split(test)
    return (ref_between == test_between and len(ref_numbers) == len(test_numbers)
            and all(number_close(a, b) for a, b in zip(ref_numbers, test_numbers)))


class TolerantText(str):
    """A sanitised output whose ``==``/``!=`` is ``tolerant_equal`` (nbval compares with ``!=``)."""

    def __eq__(self, other):
        return tolerant_equal(str(self), str(other)) if isinstance(other, str) else NotImplemented

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = str.__hash__


def is_progress(output) -> bool:
    """A tqdm bar: a widget display whose text is a bar, or a stderr stream whose every line is a bar."""
    if output.get("output_type") == "stream":
        lines = [line for line in re.split(r"[\r\n]", output.get("text", "")) if line.strip()]
        return output.get("name") == "stderr" and bool(lines) and all(PROGRESS_BAR.search(x) for x in lines)
    data = output.get("data", {})
    return WIDGET_VIEW in data and bool(PROGRESS_BAR.search(str(data.get("text/plain", ""))))


def pytest_configure(config):
    """Wrap nbval's per-output sanitiser so what it returns compares with the tolerance."""
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval absent: nothing to patch
        return
    if getattr(IPyNbCell.sanitize, "_tolerant", False):
        return
    original = IPyNbCell.sanitize

    def sanitize(self, s):
        out = original(self, s)
        return TolerantText(out) if isinstance(out, str) else out

    sanitize._tolerant = True
    IPyNbCell.sanitize = sanitize
    compare = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        return compare(self, [o for o in test if not is_progress(o)], [o for o in ref if not is_progress(o)],
                       skip_compare)

    IPyNbCell.compare_outputs = compare_outputs
