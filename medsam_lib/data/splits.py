"""The splits (paper 3.2): per data set, a seeded split by case, the group that never straddles it.

A case is the split unit a manifest names (a patient, a child's two eyes, an ultrasound acquisition's
frames): its volumes and slices never straddle the split. By default the paper's 80/20 train/test
(``split_cases``); a manifest may ask for train/validation/test fractions instead (its ``split``
field, e.g. {"train": 0.6, "validation": 0.2, "test": 0.2}; ``split_groups``). With two or more
cases at least one is in train and one in test; with a validation fraction and three or more cases,
at least one is in validation too. The released code instead takes the first 40 of 50 sorted cases,
or calls ``random.sample`` unseeded.
"""
from __future__ import annotations

import zlib

import numpy as np

from .. import paper
from ..fileio import MedSAMError, quote


SEED_MAX = 2**32 - 1  # numpy's legacy seeding (np.random.seed, pandas' random_state) takes 0 .. 2**32 - 1
SPLITS = ("train", "validation", "test")


def check_seed(seed, what: str = "--seed") -> int:
    """``seed`` as an int if it is a whole number in 0 .. 2**32 - 1 (every RNG the project seeds takes
    it); MedSAMError naming ``what`` otherwise. Checked before anything is written."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= SEED_MAX:
        raise MedSAMError(f"{what} must be a whole number from 0 to {SEED_MAX}, got {quote(seed)}")
    return int(seed)


def check_fractions(fractions, what: str = "split") -> dict[str, float]:
    """``fractions`` ({"train", "test"[, "validation"]} -> share) if the shares are numbers in (0, 1) that
    sum to 1; MedSAMError naming ``what`` otherwise."""
    if not isinstance(fractions, dict) or not {"train", "test"} <= set(fractions) or set(fractions) - set(SPLITS):
        raise MedSAMError(f"{what}: give the fractions of 'train' and 'test' (and optionally 'validation'), got "
                          f"{quote(fractions)}")
    for name, share in fractions.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise MedSAMError(f"{what}: fraction {name!r} must be a number between 0 and 1 (exclusive), got "
                              f"{quote(share)}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise MedSAMError(f"{what}: fractions {fractions} must sum to 1 (they sum to {sum(fractions.values()):g})")
    return {name: float(share) for name, share in fractions.items()}


def split_groups(case_ids, seed: int, dataset: str, fractions: dict[str, float]) -> dict[str, str]:
    """case id -> "train" / "validation" / "test" by the manifest's ``fractions`` (module docstring).

    Deterministic for the same case list (in any order), seed, data-set name and fractions.
    """
    fractions = check_fractions(fractions)
    return _split(case_ids, seed, dataset, fractions["test"], fractions.get("validation"))


def split_cases(case_ids, seed: int, dataset: str, train_fraction: float = paper.TRAIN_FRACTION) -> dict[str, str]:
    """case id -> "train" / "test": a seeded permutation per data set (paper 3.2: 80/20 by case).

    Deterministic for the same case list, seed and data-set name. With n >= 2 cases at least one
    case goes to each split.
    """
    return _split(case_ids, seed, dataset, 1.0 - train_fraction, None)


def _split(case_ids, seed: int, dataset: str, test: float, validation: float | None) -> dict[str, str]:
    """One seeded permutation per data set: its first cases to test, the next to validation (when
    ``validation`` is given), the rest to train; counts rounded from the fractions."""
    ids = sorted(set(case_ids))
    n = len(ids)
    n_test = int(round(n * test))
    if n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    n_val = 0
    if validation is not None and n >= 3:
        n_val = min(max(int(round(n * validation)), 1), n - 1 - n_test)
    rng = np.random.default_rng([int(seed), zlib.crc32(dataset.encode())])
    order = rng.permutation(n)
    parts = {ids[i]: "test" for i in order[:n_test]}
    parts.update({ids[i]: "validation" for i in order[n_test:n_test + n_val]})
    return {c: parts.get(c, "train") for c in ids}
