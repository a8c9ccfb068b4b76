"""The train/test split (paper 3.2): per data set, a seeded 80/20 split by case.

A patient's volumes and slices never straddle the split; with two or more cases at least one is in
each split. The released code instead takes the first 40 of 50 sorted cases, or calls
``random.sample`` unseeded.
"""
from __future__ import annotations

import zlib

import numpy as np

from .. import paper
from ..fileio import MedSAMError, quote


SEED_MAX = 2**32 - 1  # numpy's legacy seeding (np.random.seed, pandas' random_state) takes 0 .. 2**32 - 1


def check_seed(seed, what: str = "--seed") -> int:
    """``seed`` as an int if it is a whole number in 0 .. 2**32 - 1 (every RNG the project seeds takes
    it); MedSAMError naming ``what`` otherwise. Checked before anything is written."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= SEED_MAX:
        raise MedSAMError(f"{what} must be a whole number from 0 to {SEED_MAX}, got {quote(seed)}")
    return int(seed)


def split_cases(case_ids, seed: int, dataset: str, train_fraction: float = paper.TRAIN_FRACTION) -> dict[str, str]:
    """case id -> "train" / "test": a seeded permutation per data set (paper 3.2: 80/20 by case).

    Deterministic for the same case list, seed and data-set name. With n >= 2 cases at least one
    case goes to each split.
    """
    ids = sorted(set(case_ids))
    n = len(ids)
    n_test = int(round(n * (1.0 - train_fraction)))
    if n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    rng = np.random.default_rng([int(seed), zlib.crc32(dataset.encode())])
    order = rng.permutation(n)
    test = {ids[i] for i in order[:n_test]}
    return {c: ("test" if c in test else "train") for c in ids}
