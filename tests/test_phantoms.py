"""The embedded synthetic set: deterministic, labelled synthetic, with geometry and real targets."""
from __future__ import annotations

import json

import numpy as np

from medsam_lib.data.phantoms import CASES, make_case, write_synthetic_set
from medsam_lib.data.readers import read_image
from profile_helpers import profile_in


def test_same_seed_same_arrays_other_seed_differs():
    for case in CASES:
        a_img, a_lab = make_case(case, seed=0)
        b_img, b_lab = make_case(case, seed=0)
        c_img, _ = make_case(case, seed=1)
        assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
        assert not np.array_equal(a_img, c_img)
        assert set(np.unique(a_lab)) - {0} == set(case.labels), case.case_id


def test_written_set_is_labelled_synthetic_keeps_spacing_and_is_idempotent(tmp_path):
    out = write_synthetic_set(tmp_path / "syn", seed=0)
    index = json.loads((out / "index.json").read_text(encoding="utf-8"))
    assert index["synthetic"] is True and all(c["case_id"].startswith("synthetic_") for c in index["cases"])
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for case in CASES:
        image, mask = read_image(out / case.image), read_image(out / case.mask)
        assert image.array.shape == mask.array.shape
        if image.is_volume:
            assert np.allclose(image.spacing, case.spacing) and np.allclose(mask.spacing, case.spacing)
    write_synthetic_set(out, seed=0)  # a second call with the same seed rewrites nothing
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_hard_targets_are_hard():
    """The CT tumour is small and low-contrast; the X-ray is 16-bit; the ultrasound is speckled."""
    ct = next(c for c in CASES if c.case_id == "synthetic_ct_abdomen")
    img, lab = make_case(ct)
    tumour, liver = lab == 2, lab == 1
    assert 0 < tumour.sum(axis=(1, 2)).max() < 200
    assert abs(float(img[tumour].mean()) - float(img[liver].mean())) < 40  # HU
    xray = next(c for c in CASES if c.case_id == "synthetic_xray_chest")
    assert make_case(xray)[0].dtype == np.uint16


def test_original_phantoms_are_unchanged_and_variants_differ():
    """Variant 0 of each data set is the phantom the examples, widget and teardown were built on."""
    import hashlib

    from medsam_lib.data.phantoms import CASES_PER_DATASET

    originals = [c for c in CASES if c.variant == 0]
    assert [c.case_id for c in originals] == [c.dataset for c in originals] == [
        "synthetic_ct_abdomen", "synthetic_mr_heart", "synthetic_us_breast", "synthetic_xray_chest"]
    ct_img, ct_lab = make_case(originals[0], seed=0)
    assert ct_img.shape == (12, 128, 128) and int(ct_lab.sum()) > 0
    for dataset in {c.dataset for c in CASES}:
        members = [c for c in CASES if c.dataset == dataset]
        assert len(members) == CASES_PER_DATASET >= 5
        digests = {hashlib.sha256(make_case(c, seed=0)[1].tobytes()).hexdigest() for c in members}
        assert len(digests) == len(members), dataset  # every case's anatomy is its own


def test_curated_demo_set_splits_by_case_and_stays_small(tmp_path):
    """Enough cases per data set for train / test (and a validation case from train); few images."""
    from medsam_lib.data.curate import curate_profile

    store = curate_profile(profile_in(tmp_path))
    index = store.index
    assert index["synthetic"].all() and index["dataset"].str.startswith("synthetic_").all()
    per_dataset = index.groupby("dataset").agg(cases=("case", "nunique"))
    assert (per_dataset["cases"] == 5).all()
    splits = index.groupby(["dataset", "split"])["case"].nunique().unstack()
    assert (splits["train"] == 4).all() and (splits["test"] == 1).all()
    assert index["image_id"].nunique() <= 150  # the demo embeds each curated image once: keep CI cheap
