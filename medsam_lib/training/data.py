"""What a training step eats: (image, one target) pairs from the curated train split, jittered boxes,
a validation split carved by case, and a sampler whose position is the whole of its state.

- ``train_val_split(index, val_fraction, seed)``: the curated ``train`` rows split by case, per data
  set (seeded; at least one validation case where a data set has two or more train cases). The
  ``test`` split is never read.
- ``Pairs``: the rows of one split with their target masks held in memory (bit-packed, 8 KiB per
  target at 256 x 256); an empty target mask is refused here, naming the store and the row.
- ``StreamSampler``: an endless stream of pair indices: epoch e is a seeded permutation of all
  pairs; the global sample number n alone fixes the pair (epoch n // N, slot n % N) and its jitter
  (an RNG seeded by (seed, n)). Its state is n, so resume and the split of a global batch across
  ranks change nothing about what any sample is.
- ``sampler_batch``: the batch of given global sample numbers, boxes jittered by ``geometry.jitter_box``
  (paper 3.2: each side moved outwards by a random 0-20 px at the curated 256 scale, clipped to the
  image; ``official_code``: 0-19 px, as v1's ``np.random.randint(0, 20)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import paper
from ..data.splits import split_cases
from ..fileio import MedSAMError
from ..geometry import JITTER_MAX_PX, jitter_box

SIZE = paper.CURATED_IMAGE_SIZE


def train_val_split(index, val_fraction: float, seed: int):
    """(train rows, validation rows) of the curated ``train`` split, by case per data set."""
    train = index[index["split"] == "train"]
    if train.empty:
        raise MedSAMError("the curated store has no train split rows; curate a data set with cases first")
    if val_fraction <= 0:
        return train.reset_index(drop=True), train.iloc[:0].reset_index(drop=True)
    val_cases = set()
    for dataset, rows in train.groupby("dataset"):
        # its own stream (the data-set name is tagged), independent of the curated train/test permutation
        split = split_cases(rows["case"].unique(), seed, f"{dataset}/validation", train_fraction=1.0 - val_fraction)
        val_cases |= {(dataset, case) for case, part in split.items() if part == "test"}
    is_val = np.array([(d, c) in val_cases for d, c in zip(train["dataset"], train["case"])], dtype=bool)
    return train[~is_val].reset_index(drop=True), train[is_val].reset_index(drop=True)


@dataclass
class Pairs:
    """One split's (image, target) pairs: index rows, their boxes, their masks (bit-packed)."""

    rows: object  # DataFrame
    boxes: np.ndarray  # (N, 4) int64 at 256, x1/y1 inclusive
    packed: np.ndarray  # (N, 256 * 256 / 8) uint8

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def image_ids(self) -> list[str]:
        return list(self.rows["image_id"])

    def masks(self, indices) -> np.ndarray:
        """(B, 256, 256) bool."""
        return np.unpackbits(self.packed[np.asarray(indices)], axis=1, count=SIZE * SIZE).reshape(-1, SIZE, SIZE) > 0


def load_pairs(curated, rows, progress: bool = False, what: str = "train") -> Pairs:
    """Read every target mask of ``rows`` once; refuse an empty one naming the store and the row."""
    from tqdm.auto import tqdm

    packed = np.empty((len(rows), SIZE * SIZE // 8), dtype=np.uint8)
    for i, (_, row) in enumerate(tqdm(rows.iterrows(), total=len(rows), desc=f"reading {what} targets",
                                      unit="target", disable=not progress)):
        mask = curated.load_mask(row)
        if mask.shape != (SIZE, SIZE):
            raise MedSAMError(f"{curated.path / row['file']}: target {row['target']!r} of {row['image_id']} is "
                              f"{mask.shape}, expected ({SIZE}, {SIZE}); curate again")
        if not mask.any():
            raise MedSAMError(f"{curated.path / row['file']}: target {row['target']!r} of {row['image_id']} has an "
                              "empty mask (nothing to learn, no box); curate the store again")
        packed[i] = np.packbits(mask.reshape(-1))
    boxes = rows[["x0", "y0", "x1", "y1"]].to_numpy(dtype=np.int64) if len(rows) else np.zeros((0, 4), np.int64)
    return Pairs(rows=rows.reset_index(drop=True), boxes=boxes, packed=packed)


class StreamSampler:
    """Seeded endless stream over N pairs; ``position`` (samples handed out) is its whole state."""

    def __init__(self, n: int, seed: int, jitter: str = "paper"):
        if n <= 0:
            raise MedSAMError("no training pairs to sample from")
        self.n, self.seed, self.jitter, self.position = n, int(seed), jitter, 0
        self._perm: tuple[int, np.ndarray] | None = None

    @property
    def epoch(self) -> int:
        return self.position // self.n

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch, 1]).permutation(self.n))
        return self._perm[1]

    def sample(self, number: int) -> int:
        """Pair index of global sample ``number``."""
        return int(self._order(number // self.n)[number % self.n])

    def rng(self, number: int) -> np.random.Generator:
        """The jitter RNG of global sample ``number``."""
        return np.random.default_rng([self.seed, number, 2])

    def take(self, size: int) -> list[int]:
        """The global sample numbers of the next batch (advances the position)."""
        numbers = list(range(self.position, self.position + size))
        self.position += size
        return numbers

    def state_dict(self) -> dict:
        return {"position": self.position, "n": self.n, "seed": self.seed, "jitter": self.jitter}

    def load_state_dict(self, state: dict) -> None:
        if (state["n"], state["seed"], state["jitter"]) != (self.n, self.seed, self.jitter):
            raise MedSAMError(f"sampler state of {state['n']} pairs / seed {state['seed']} / jitter {state['jitter']} "
                              f"does not match this run's {self.n} / {self.seed} / {self.jitter}")
        self.position = int(state["position"])


@dataclass
class Batch:
    image_ids: list[str]
    boxes: torch.Tensor  # (B, 4) float32 at 256, x1/y1 inclusive
    targets: torch.Tensor  # (B, 1, 256, 256) float32
    inputs: torch.Tensor  # (B, 256, 64, 64) embeddings, or (B, 3, S, S) model input images


def make_batch(pairs: Pairs, indices, boxes: np.ndarray, source) -> Batch:
    """Assemble the pairs ``indices`` with their (jittered) ``boxes``; ``source`` gives the inputs:
    ``source(image_ids) -> tensor`` (stored embeddings or prepared images)."""
    ids = [pairs.rows["image_id"].iat[i] for i in indices]
    targets = torch.from_numpy(pairs.masks(indices)).unsqueeze(1).float()
    return Batch(ids, torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)), targets, source(ids))


def sampler_batch(pairs: Pairs, sampler: StreamSampler, numbers, source) -> Batch:
    """The batch of global sample ``numbers`` (a rank passes its part of the global batch): each pair's
    box jittered with its sample's own RNG (``StreamSampler.rng``) as the sampler's convention says."""
    indices = [sampler.sample(n) for n in numbers]
    boxes = np.stack([jitter_box(pairs.boxes[i], (SIZE, SIZE), sampler.rng(n), JITTER_MAX_PX[sampler.jitter])
                      for i, n in zip(indices, numbers)])
    return make_batch(pairs, indices, boxes, source)


def embedding_source(store):
    """Inputs from an embedding store: (B, 256, 64, 64) float32."""
    def fetch(ids):
        return torch.from_numpy(np.asarray(store.get_batch(ids), dtype=np.float32))
    return fetch


def image_source(curated, rows, transform):
    """Inputs computed from curated images (recipe full): (B, 3, S, S) float32 model input."""
    first = rows.drop_duplicates("image_id").set_index("image_id")

    def fetch(ids):
        return torch.stack([transform.prepare(curated.load_image(first.loc[i])).tensor for i in ids])
    return fetch
