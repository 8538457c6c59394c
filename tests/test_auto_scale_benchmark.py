"""benchmarks/auto_scale.py: the enlarged samples and the RESULTS.md table, by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from instembed.data.sample import Sample

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import auto_scale as A  # noqa: E402


def test_enlarge_grows_labels_into_blocks_and_keeps_the_image_smooth():
    lab = np.array([[0, 1], [2, 2]], np.int32)
    img = np.array([[[0.0, 1.0], [0.5, 0.5]]], np.float32)
    ignore = np.array([[True, False], [False, False]])
    big = A.enlarge(Sample(image=img, instances=lab, ignore=ignore), 3)
    np.testing.assert_array_equal(big.instances, np.kron(lab, np.ones((3, 3), np.int32)))
    assert big.instances.dtype == np.int32 and big.image.shape == (1, 6, 6)
    assert big.ignore.dtype == bool and big.ignore[:3, :3].all() and not big.ignore[3:].any()
    # bilinear: the corner pixels keep their values, the mean is kept
    assert big.image[0, 0, 0] == pytest.approx(0.0) and big.image[0, 0, 5] == pytest.approx(1.0)
    assert big.image.mean() == pytest.approx(img.mean(), abs=1e-6)
    stack = np.zeros((2, 2, 2), bool)
    stack[0, 0, 0] = stack[1, :, 1] = True  # overlapping masks stay a stack
    grown = A.enlarge(Sample(image=img, instances=stack), 2).instances
    assert grown.shape == (2, 4, 4) and grown.dtype == bool
    assert grown[0].sum() == 4 and grown[1].sum() == 8
    same = Sample(image=img, instances=lab)
    assert A.enlarge(same, 1) is same


def test_render_reads_plain_and_auto_side_by_side():
    def m(ap, fp, s):
        return {
            "AP_dsb@0.5": ap,
            "AP_dsb@0.5:0.95": 0.5,
            "AP": 0.4,
            "FP_per_image@0.5": fp,
            "FN_per_image@0.5": 1.0,
            "cpu_s_per_image": s,
        }

    rows = [
        {"model": "m", "factor": 2, "n_val": 30, "resized": 28, "plain": m(0.3, 9.0, 4.0),
         "auto": m(0.85, 2.0, 5.0)},
        {"model": "m", "factor": 1, "n_val": 30, "resized": 0, "plain": m(0.9, 2.5, 1.0),
         "auto": m(0.9, 2.5, 1.0)},
    ]  # fmt: skip
    lines = A.render(rows)
    body = [ln for ln in lines if ln.startswith("| `m`")]
    assert body[0].startswith("| `m` | 1x | 0 of 30 | 0.900 / 0.900 |")
    assert body[1].startswith("| `m` | 2x | 28 of 30 | 0.300 / 0.850 | 0.500 / 0.500 |")
    assert body[1].endswith("| 9.00 / 2.00 | 1.00 / 1.00 | 4.0 / 5.0 |")
    # a model carrying a size model is marked as such
    sized = A.render([rows[0] | {"model": "w", "size_model": True}])
    assert any(ln.startswith("| `w` (size model) | 2x | 28 of 30 |") for ln in sized)


def test_render_check_reads_the_log_errors():
    errs = {"x0.5": {"median_abs": 0.02, "max_abs": 0.08}, "x1": {"median_abs": 0.03,
            "max_abs": 0.1}, "x2": {"median_abs": 0.2, "max_abs": 1.36}}  # fmt: skip
    rows = [{"model": "w", "n_fit": 40, "shipped": True, **errs},
            {"model": "d", "n_fit": 48, "shipped": False, **errs}]  # fmt: skip
    lines = A.render_check(rows)
    body = [ln for ln in lines if ln.startswith("| `")]
    assert (
        body[0] == "| `d` | 48 images x 5 scales | 0.02 / 0.08 | 0.03 / 0.10 | 0.20 / 1.36 | no |"
    )
    assert body[1].startswith("| `w` | 40 images") and body[1].endswith("| yes |")
