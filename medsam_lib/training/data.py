"""What a training step eats: (image, one target) pairs from the curated train split, jittered boxes,
the validation rows, and a sampler whose position is the whole of its state.

- ``select_datasets(index, names)``: the rows of the named data sets (config ``datasets``; an unknown
  name is refused naming the store's data sets).
- ``split_rows(index, validation, val_fraction, seed)``: (train rows, validation rows, source):
  ``index``: every curated ``train`` row trains and the ``validation`` rows validate; ``carve``:
  ``train_val_split``; ``auto``: index when the store has validation rows. The ``test`` split is
  never read. Each row keeps its curated index row number (column ``row``).
- ``train_val_split(index, val_fraction, seed)``: the curated ``train`` rows split by case, per data
  set (seeded; at least one validation case where a data set has two or more train cases).
- ``stratified_sample(rows, max_targets, seed)``: at most ceil(max_targets / data sets) rows of each
  data set (seeded), so one data set cannot fill the validation.
- ``unfit_reasons(pairs)``: why each target is unfit for a box prompt ('' when fit): a box covering
  >= ``UNFIT_BOX_AREA`` of the image, or a target filling < ``UNFIT_MIN_FILL`` of its box.
- ``validation_boxes(pairs, kind, seed)``: the validation boxes: ground truth (``tight``) or each side
  moved outwards by 0-19 px (``jittered``, the v1 tutorial's test boxes) with an RNG seeded by
  (seed, index row), so every validation of every run uses the same boxes.
- ``Pairs``: the rows of one split with their target masks held in memory (bit-packed, 8 KiB per
  target at 256 x 256); an empty target mask is refused here, naming the store and the row.
- ``StreamSampler``: an endless stream of pair indices: epoch e is a seeded permutation of all
  pairs; the global sample number n alone fixes the pair (epoch n // N, slot n % N) and its jitter
  (an RNG seeded by (seed, n)). Its state is n, so resume and the split of a global batch across
  ranks change nothing about what any sample is.
- ``sampler_batch``: the batch of given global sample numbers, boxes jittered by ``geometry.jitter_box``
  (paper 3.2: each side moved outwards by a random 0-20 px at the curated 256 scale, clipped to the
  image; ``official_code``: 0-19 px, as v1's ``np.random.randint(0, 20)``; ``none``: 0 px).
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
JITTER_PX = dict(JITTER_MAX_PX, none=0)  # config box_jitter -> the largest outward shift per side, px at 256
VAL_JITTER = "official_code"  # validation's jittered boxes: 0-19 px, the v1 tutorial's test boxes
UNFIT_BOX_AREA = 0.95  # a box covering at least this share of the 256 x 256 image: "a box over the whole image"
UNFIT_MIN_FILL = 0.20  # a target filling less than this share of its own box (thin, scattered structures)
REASON_WHOLE_IMAGE = "box covers the whole image"
REASON_SPARSE = "target fills little of its box"


def select_datasets(index, names: list[str], where: str = "key 'datasets'"):
    """The rows of data sets ``names`` (all rows when empty); an unknown name is refused, naming the
    store's data sets."""
    if not names:
        return index
    known = sorted(index["dataset"].unique())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise MedSAMError(f"{where}: no data set {unknown[0]!r} in the curated store; its data sets: "
                          f"{', '.join(known)}")
    return index[index["dataset"].isin(names)]


def split_rows(index, validation: str, val_fraction: float, seed: int, where: str = "key 'validation'"):
    """(train rows, validation rows, the source used: "index" or "carve"); see the module docstring."""
    index = index.rename_axis("row").reset_index()  # the curated index row number travels with each row
    has_val = bool((index["split"] == "validation").any())
    if validation == "index" and not has_val:
        raise MedSAMError(f"{where}: validation = 'index', but the curated store has no validation split rows "
                          "(its manifest gives no validation fraction); use 'carve' or 'auto'")
    if validation == "carve" or (validation == "auto" and not has_val):
        train, val = train_val_split(index, val_fraction, seed)
        return train, val, "carve"
    train = index[index["split"] == "train"]
    if train.empty:
        raise MedSAMError("the curated store has no train split rows; curate a data set with cases first")
    return train.reset_index(drop=True), index[index["split"] == "validation"].reset_index(drop=True), "index"


def stratified_sample(rows, max_targets: int, seed: int):
    """At most ceil(max_targets / data sets) rows of each data set, a seeded sample; every row when
    ``max_targets`` is 0 or not below the row count. Row order kept."""
    if not max_targets or len(rows) <= max_targets:
        return rows
    per = -(-max_targets // rows["dataset"].nunique())
    keep = []
    for _, part in rows.groupby("dataset", sort=True):
        keep.append(part if len(part) <= per else part.sample(per, random_state=seed))
    import pandas as pd

    return pd.concat(keep).sort_index().reset_index(drop=True)


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

    def pixels(self) -> np.ndarray:
        """(N,) target pixels at 256 x 256."""
        return _POPCOUNT[self.packed].sum(axis=1, dtype=np.int64) if len(self) else np.zeros(0, np.int64)

    def subset(self, keep) -> Pairs:
        """The pairs where the boolean ``keep`` is true (rows renumbered)."""
        keep = np.asarray(keep, dtype=bool)
        return Pairs(self.rows[keep].reset_index(drop=True), self.boxes[keep], self.packed[keep])


_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)


def unfit_reasons(pairs: Pairs) -> np.ndarray:
    """Why each target is unfit for a box prompt, '' when fit: its box covers >= ``UNFIT_BOX_AREA`` of
    the 256 x 256 image (``REASON_WHOLE_IMAGE``), or it fills < ``UNFIT_MIN_FILL`` of its box
    (``REASON_SPARSE``); both: joined by '; '. Boxes are inclusive (x1 - x0 + 1 pixels wide)."""
    b = pairs.boxes.astype(np.int64)
    box_area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    whole = box_area >= UNFIT_BOX_AREA * SIZE * SIZE
    sparse = pairs.pixels() < UNFIT_MIN_FILL * box_area
    return np.array(["; ".join(r for r, on in ((REASON_WHOLE_IMAGE, w), (REASON_SPARSE, s)) if on)
                     for w, s in zip(whole, sparse)], dtype=object)


def unfit_table(pairs: Pairs, excluded: bool):
    """Per data set of ``pairs`` (the train pairs before any exclusion): targets, unfit ones per reason,
    and how many were left out (all unfit ones when ``excluded``, else none)."""
    import pandas as pd

    reasons = unfit_reasons(pairs)
    frame = pd.DataFrame({"dataset": pairs.rows["dataset"].to_numpy(), "unfit": reasons != "",
                          "whole_image": [REASON_WHOLE_IMAGE in r for r in reasons],
                          "sparse": [REASON_SPARSE in r for r in reasons]})
    table = frame.groupby("dataset", sort=True).agg(targets=("unfit", "size"), unfit=("unfit", "sum"),
                                                    box_covers_image=("whole_image", "sum"),
                                                    target_fills_little=("sparse", "sum")).reset_index()
    table["left_out"] = table["unfit"] if excluded else 0
    return table.astype({c: "int64" for c in table.columns if c != "dataset"})


def validation_boxes(pairs: Pairs, kind: str, seed: int) -> np.ndarray:
    """(N, 4) float64 validation boxes at 256: ``tight`` the ground-truth boxes; ``jittered`` each side moved
    outwards by 0-19 px by ``geometry.jitter_box`` with the RNG ``default_rng([seed, row, 3])`` of the
    target's curated index row (the same boxes at every validation, in every run of that seed)."""
    if kind == "tight":
        return pairs.boxes.astype(np.float64)
    rows = pairs.rows["row"].to_numpy()
    out = np.zeros((len(pairs), 4), dtype=np.float64)
    for i, (box, row) in enumerate(zip(pairs.boxes, rows)):
        out[i] = jitter_box(box, (SIZE, SIZE), np.random.default_rng([seed, int(row), 3]), JITTER_MAX_PX[VAL_JITTER])
    return out


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
    boxes = np.stack([jitter_box(pairs.boxes[i], (SIZE, SIZE), sampler.rng(n), JITTER_PX[sampler.jitter])
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
