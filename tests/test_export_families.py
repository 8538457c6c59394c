"""TorchScript export of the families that return instances themselves (engine/export.py,
engine/export_instances.py): Mask R-CNN, the semi-convolutional Mask R-CNN and the
instance-sensitive FCN give, from the exported file, what the eager model gives; a family
without an exporter is refused with an error naming what is missing.

Tolerances. The exported file runs the same kernels on the same values as the eager model (the
dense network traced, the rest compiled from the functions the model calls), so the outputs are
expected to agree to float32 rounding: boxes (coordinates <= 70 px, float32 spacing 7.6e-6
there) within 1e-4 px -- about a dozen units of the last place through decoding and clipping;
scores and mask probabilities (in [0, 1], spacing <= 6e-8) within 1e-5. The number of
detections and their order must agree exactly (one flipped threshold or NMS decision would
change them).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from instembed.engine.config import load_config
from instembed.engine.export import export_instance_model, export_torchscript
from instembed.models.build import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = {
    "widths": [8, 16, 32, 32],
    "fpn_channels": 16,
    "representation_size": 32,
    "mask_channels": 8,
    "rpn_pre_nms_top_n": [100, 60],
    "rpn_post_nms_top_n": [50, 30],
}
BOX_TOL, PROB_TOL = 1e-4, 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def _image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    """Two bright rectangles on noise: something for the (untrained) detector to score."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(1, 1, h, w, generator=g)
    x[..., 5:20, 6:24] += 1.0
    x[..., 24:40, 30:50] += 1.0
    return x


@pytest.mark.parametrize("family", ["maskrcnn", "semiconv_maskrcnn"])
def test_exported_detector_equals_the_eager_model(tmp_path, family):
    cfg = load_config(CONFIGS / "touching_cells_maskrcnn.yaml")
    torch.manual_seed(0)
    model = build_model(family, in_channels=1, **SMALL).eval()
    path = export_torchscript(model, cfg, tmp_path / "m.ts", example_size=64)
    extra = {"config.yaml": ""}
    m = torch.jit.load(str(path), _extra_files=extra)
    assert b"detections" in extra["config.yaml"]  # the run config travels with the file
    assert m.has_instances
    # traced at 64 x 64; run at a size that is not a multiple of 32 (padding inside)
    for h, w in ((64, 64), (50, 70)):
        x = _image(h, w)
        with torch.no_grad():
            inst = model(x).instances[0]
        boxes, scores, classes, masks = m(x)
        n = len(inst)
        assert n > 0 and boxes.shape == (n, 4) and masks.shape == (n, h, w)
        assert torch.allclose(boxes, inst.boxes, rtol=0, atol=BOX_TOL)
        assert torch.allclose(scores, inst.scores, rtol=0, atol=PROB_TOL)
        assert torch.allclose(masks, inst.masks, rtol=0, atol=PROB_TOL)
        assert inst.classes is None and torch.equal(classes, torch.ones(n, dtype=torch.long))
        seeds = m.seeds(x)
        if family == "semiconv_maskrcnn":
            assert torch.allclose(seeds, inst.centers, rtol=0, atol=BOX_TOL)
        else:
            assert seeds.shape == (n, 0)
    with pytest.raises(torch.jit.Error, match="takes one image"):
        m(torch.cat([x, x]))
    with pytest.raises(torch.jit.Error, match="expected 1 channel"):
        m(torch.zeros(1, 3, 32, 32))


def test_exported_detector_with_two_classes_returns_their_ids(tmp_path):
    torch.manual_seed(1)
    model = build_model("maskrcnn", in_channels=1, num_classes=2, **SMALL).eval()
    m = export_instance_model(model, torch.zeros(1, 1, 64, 64))
    x = _image(64, 64, seed=2)
    with torch.no_grad():
        inst = model(x).instances[0]
    boxes, scores, classes, _ = m(x)
    assert len(inst) > 0 and set(inst.classes.tolist()) == {1, 2}  # both classes detected
    assert torch.equal(classes, inst.classes)
    assert torch.allclose(boxes, inst.boxes, rtol=0, atol=BOX_TOL)


def test_exported_isfcn_equals_the_eager_model(tmp_path):
    cfg = load_config(CONFIGS / "touching_cells_isfcn.yaml")
    torch.manual_seed(0)
    model = build_model("isfcn", depth=1, width=4, window_sizes=[9, 13], min_score=0.0,
                        max_candidates=40).eval()  # fmt: skip
    path = export_torchscript(model, cfg, tmp_path / "isfcn.ts", example_size=32)
    m = torch.jit.load(str(path))
    x = _image(37, 45)  # odd size: padded (reflection) and cropped inside, as the model
    with torch.no_grad():
        out = model(x)
    maps = m(x)
    assert torch.allclose(maps["score_maps"], out.aux["score_maps"], rtol=0, atol=PROB_TOL)
    assert torch.allclose(maps["objectness"], out.aux["objectness"], rtol=0, atol=PROB_TOL)
    masks, scores, centers = m.detect(x)
    inst = out.instances[0]
    assert len(inst) == 40 and masks.shape == (40, 37, 45)  # min_score 0: max_candidates
    assert torch.allclose(scores, inst.scores, rtol=0, atol=PROB_TOL)
    assert torch.equal(centers, inst.centers)
    assert torch.allclose(masks, inst.masks, rtol=0, atol=PROB_TOL)


def test_a_family_without_an_exporter_is_refused_by_name(tmp_path):
    cfg = load_config(CONFIGS / "touching_cells_maskrcnn.yaml")
    model = build_model("recurrent_attention", in_channels=1).eval()
    with pytest.raises(ValueError, match="RecurrentAttention .*no TorchScript exporter") as err:
        export_torchscript(model, cfg, tmp_path / "r.ts", example_size=32)
    assert "maskrcnn" in str(err.value) and "isfcn" in str(err.value)  # what can be exported
    assert not (tmp_path / "r.ts").exists()
    detector = build_model("maskrcnn", in_channels=1, **SMALL).eval()
    with pytest.raises(ValueError, match="'detections' method.*no TorchScript version"):
        export_torchscript(detector, cfg, tmp_path / "d.ts", example_size=64, postprocessing=True)


def test_scripted_detection_ops_equal_the_eager_ones():
    """The TorchScript paths of NMS (no NumPy), RoIAlign and mask pasting give the eager
    results exactly: random boxes with duplicated scores (ties by index), an empty input."""
    from instembed.detection.boxes import batched_nms, nms
    from instembed.detection.masks import paste_masks, paste_masks_in_image
    from instembed.detection.pooling import roi_align, roi_align_rois

    g = torch.Generator().manual_seed(3)
    s_nms, s_bnms = torch.jit.script(nms), torch.jit.script(batched_nms)
    for _ in range(10):
        xy = torch.rand(60, 2, generator=g) * 40
        boxes = torch.cat([xy, xy + 1 + 20 * torch.rand(60, 2, generator=g)], 1)
        scores = torch.randint(0, 8, (60,), generator=g).float()  # many exact ties
        groups = torch.randint(0, 3, (60,), generator=g)
        assert torch.equal(s_nms(boxes, scores, 0.4), nms(boxes, scores, 0.4))
        assert torch.equal(
            s_bnms(boxes, scores, groups, 0.4), batched_nms(boxes, scores, groups, 0.4)
        )
    assert s_nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    feat = torch.randn(2, 3, 20, 24, generator=g)
    rois = torch.tensor([[0, 1.0, 2, 10, 12], [1, 3, 4, 20, 18], [0, 5, 5, 5, 9]])
    s_ra = torch.jit.script(roi_align_rois)
    for sr, aligned in ((2, True), (-1, False), (0, True)):
        want = roi_align(feat, rois, 7, 0.5, sr, aligned)
        assert torch.equal(s_ra(feat, rois, 7, 7, 0.5, sr, aligned), want)
    probs = torch.rand(3, 28, 28, generator=g)
    s_paste = torch.jit.script(paste_masks)
    for t in (None, 0.5):
        want = paste_masks_in_image(probs, rois[:, 1:], (20, 24), t)
        assert torch.equal(s_paste(probs, rois[:, 1:], 20, 24, t), want)
