"""Block-wise segmentation: recall that does not fall as the image grows, exact hand cases.

The mosaic check: N x N copies of a real BBBC039 ground-truth image must give N^2 times the
objects found in one copy (+-1 %), for every clusterer that finds its objects on a sample.
An oracle network returns ideal outputs of the mosaic (embedding = the object's centroid in
whole-image coordinates, seed = 1 on objects, ...), so the test measures the post-processing
path alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from torch import nn

from instembed.engine.blockwise import (
    Block,
    block_grid,
    crop_outputs,
    segment_blockwise,
)
from instembed.engine.config import ClusterConfig, Config
from instembed.engine.predict import Predictor, instances_from_outputs
from instembed.structures import Outputs

SCALE = 1 / 64


def ideal_outputs(labels: np.ndarray) -> dict[str, torch.Tensor]:
    """Ideal dense maps of a label image: every object pixel embeds its object's centroid."""
    h, w = labels.shape
    n = int(labels.max())
    idx = np.arange(1, n + 1)
    cy, cx = (np.asarray(v) for v in zip(*ndi.center_of_mass(labels > 0, labels, idx)))
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    fg = labels > 0
    emb = np.zeros((2, h, w), np.float32)
    emb[0][fg] = cy[labels[fg] - 1] * SCALE
    emb[1][fg] = cx[labels[fg] - 1] * SCALE
    emb[0][~fg], emb[1][~fg] = yy[~fg] * SCALE, xx[~fg] * SCALE
    off = np.zeros((2, h, w), np.float32)
    off[0][fg] = cy[labels[fg] - 1] - yy[fg]
    off[1][fg] = cx[labels[fg] - 1] - xx[fg]
    # seed maps peak at the centre as a trained one does: > 0.5 only within ~2.8 px of it
    d2 = (yy - emb[0] / SCALE) ** 2 + (xx - emb[1] / SCALE) ** 2
    seed = np.where(fg, 0.3 + 0.7 * np.exp(-d2 / 2.5**2), 0.0).astype(np.float32)
    center = np.zeros((h, w), np.float32)
    ry, rx = np.round(cy).astype(int), np.round(cx).astype(int)
    center[ry, rx] = 1.0
    center = ndi.gaussian_filter(center, 2.0) * 2 * np.pi * 4  # peak ~1 at each centre
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None]  # noqa: E731
    return {
        "embedding": t(emb),
        "seed": t(seed[None]),
        "sigma": t(np.full((1, h, w), 0.05, np.float32)),
        "center": t(center[None]),
        "offset": t(off),
    }


class OracleNet(nn.Module):
    """Returns the precomputed ideal maps of the window it is given (by its coords_origin)."""

    in_channels = 1
    size_divisor = 1
    receptive_field = 1

    def __init__(self, maps: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.maps = maps
        self.calls = 0

    def forward(self, x, coords_origin=None, targets=None) -> Outputs:
        self.calls += 1
        y0, x0 = (0, 0) if coords_origin is None else (int(v) for v in coords_origin[0])
        h, w = x.shape[-2:]
        return Outputs(**{k: v[..., y0 : y0 + h, x0 : x0 + w] for k, v in self.maps.items()})


CLUSTERERS = {
    "seeded": ClusterConfig("seeded", {"seed_thresh": 0.5, "fg_thresh": 0.2, "min_size": 5}),
    "meanshift": ClusterConfig("meanshift", {"bandwidth": 0.05, "min_size": 5, "fg_thresh": 0.2}),
    "threshold": ClusterConfig("threshold", {"delta_v": 0.05, "min_size": 5, "fg_thresh": 0.2}),
    "hdbscan": ClusterConfig(
        "hdbscan", {"min_size": 5, "fg_thresh": 0.2, "min_cluster_area": 80, "min_samples": 2}
    ),
    "center_offset": ClusterConfig("center_offset", {"threshold": 0.5, "min_size": 5}),
}


@pytest.fixture(scope="module")
def nuclei(shared_data):
    from skimage.segmentation import relabel_sequential

    from instembed.data.readers import open_dataset

    lab = open_dataset(shared_data("bbbc039"))[0].instances
    return relabel_sequential(lab[:260, :348].astype(np.int32))[0]  # a quarter: quick


def _mosaic(lab: np.ndarray, n: int) -> np.ndarray:
    h, w = lab.shape
    out = np.zeros((n * h, n * w), np.int32)
    k = int(lab.max())
    for i in range(n):
        for j in range(n):
            tile = np.where(lab > 0, lab + k * (i * n + j), 0)
            out[i * h : (i + 1) * h, j * w : (j + 1) * w] = tile
    return out


@pytest.mark.parametrize("method", sorted(CLUSTERERS))
def test_mosaic_recall_does_not_fall_with_image_size(nuclei, method):
    counts = {}
    for n in (1, 3, 6):  # 260 x 348 ... 1560 x 2088 pixels
        lab = _mosaic(nuclei, n)
        model = OracleNet(ideal_outputs(lab))
        pred = Predictor(model, Config(), cluster=CLUSTERERS[method], tile=512)
        counts[n] = len(pred(np.zeros((1, *lab.shape), np.float32)))
    alone = counts[1]
    assert alone >= 0.9 * int(nuclei.max())  # the ideal maps are segmentable
    for n in (3, 6):
        assert abs(counts[n] - n * n * alone) <= 0.01 * n * n * alone, (method, counts)


def test_whole_image_clustering_loses_objects_that_blocks_keep(nuclei):
    # the defect the blocks fix: one sample for the whole mosaic thins out with its size
    lab = _mosaic(nuclei, 6)
    maps = ideal_outputs(lab)
    cc = CLUSTERERS["seeded"]
    whole = instances_from_outputs(Outputs(**maps), cc)
    blocks = Predictor(OracleNet(maps), Config(), cluster=cc, tile=512)(
        np.zeros((1, *lab.shape), np.float32)
    )
    alone = len(instances_from_outputs(Outputs(**ideal_outputs(nuclei)), cc))
    assert len(blocks) >= 0.99 * 36 * alone
    assert len(whole) < 0.99 * 36 * alone


def test_block_grid_partitions_the_image_and_halos_are_clipped():
    blocks = block_grid(10, 7, block=4, halo=2)
    assert blocks[0] == Block(0, 4, 0, 4, 0, 6, 0, 6)
    assert blocks[-1] == Block(8, 10, 4, 7, 6, 10, 2, 7)
    cover = np.zeros((10, 7), int)
    for b in blocks:
        cover[b.cy0 : b.cy1, b.cx0 : b.cx1] += 1
    assert (cover == 1).all() and len(blocks) == 3 * 2


def test_an_object_across_a_block_border_is_kept_once_by_its_anchor_block():
    # a 6 x 6 square whose mean position (row 9.5 -> 9, column 5.5 -> 5) lies in block (8.., 4..)
    lab = np.zeros((16, 12), np.int32)
    lab[7:13, 3:9] = 1
    lab[1:3, 1:3] = 2  # a small object inside block (0, 0)
    maps = Outputs(**ideal_outputs(lab))
    regions = []

    def region(y0, y1, x0, x1):
        regions.append((y0, y1, x0, x1))
        return crop_outputs(maps, y0, y1, x0, x1)

    cc = ClusterConfig("threshold", {"delta_v": 0.05, "fg_thresh": 0.2})
    inst = segment_blockwise(region, (16, 12), lambda o: instances_from_outputs(o, cc), 4, 8)
    assert len(regions) == 4 * 3
    assert len(inst) == 2
    # the square is whole (its block's region reaches 8 px beyond the core) and counted once
    ids = np.unique(inst.labels[lab == 1])
    assert len(ids) == 1 and np.array_equal(inst.labels == ids[0], lab == 1)
    assert np.array_equal(inst.labels > 0, lab > 0)


def test_without_enough_halo_an_object_is_cut():
    lab = np.zeros((16, 12), np.int32)
    lab[7:13, 3:9] = 1
    maps = Outputs(**ideal_outputs(lab))
    cc = ClusterConfig("threshold", {"delta_v": 0.05, "fg_thresh": 0.2})
    inst = segment_blockwise(
        lambda *r: crop_outputs(maps, *r), (16, 12), lambda o: instances_from_outputs(o, cc), 4, 0
    )
    # without a halo every block sees only its part of the square: it is cut into pieces
    assert len(np.unique(inst.labels[lab == 1])) > 1
