"""TorchScript export of the model families that return instances themselves: Mask R-CNN, the
semi-convolutional Mask R-CNN and the instance-sensitive FCN (docs/maskrcnn.md,
docs/instance_fcn.md).

The dense part of the network is traced (``torch.jit.trace``) and the rest -- the part with
data-dependent control flow -- is compiled with ``torch.jit.script`` from the *same* functions
the Python model calls, so the exported file returns what the eager model's ``Outputs.instances``
holds (the raw detections, before the ``"detections"`` post-processing):

* :class:`MaskRCNNExport` (``maskrcnn``, ``semiconv_maskrcnn``): traced backbone + FPN + RPN
  head (+ the semi-convolutional embedding Psi); scripted anchors, proposal selection (top-k per
  level, decoding, NMS), multi-level RoIAlign, box head, per-class decoding, score threshold,
  batched NMS, mask head, the semi-convolutional mask update, mask pasting.
  ``m(image) -> (boxes (N, 4), scores (N,), classes (N,) int64, masks (N, H, W) float)`` for one
  image (1, C, H, W); ``classes`` is all ones for a one-class model (whose eager instances carry
  no classes); ``masks`` are probabilities (sigmoid of the mask logits pasted into the image).
* :class:`ISFCNExport` (``isfcn``): traced backbone + decoder; scripted dense windows,
  assembling and pasting. ``m(image) -> dict`` (``score_maps``, ``objectness``, as the network
  outputs of every other family) and ``m.detect(image) -> (masks (N, H, W) float, scores (N,),
  centers (N, 2))`` for one image.

Both carry ``has_instances = True``; the ``"detections"`` post-processing (mask threshold, score
threshold, mask NMS) is not compiled in: apply it to the returned tensors
(:func:`instembed.cluster.detections.filter_detections`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instembed.cluster.torchscript import ScriptedNet
from instembed.models.fpn import FPN_STRIDES
from instembed.models.isfcn import dense_candidates
from instembed.models.maskrcnn import (
    MaskRCNN,
    boxes_to_rois,
    detect_boxes,
    paste_masks,
    pool_levels,
)
from instembed.models.rpn import flatten_levels, level_anchors, select_proposals
from instembed.models.semiconv_maskrcnn import mask_update, seed_positions

__all__ = ["ISFCNExport", "MaskRCNNExport", "instance_exporter"]


class _MaskRCNNDense(nn.Module):
    """What gets traced: backbone + FPN (P2..P6), the RPN head's flattened logits and deltas,
    and Psi on P2..P5 (the semi-convolutional variant; empty maps otherwise)."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = self.model.backbone(x)
        logits, deltas = flatten_levels(*self.model.rpn.head(feats))
        if hasattr(self.model, "embedding"):
            psi = self.model.extra_features(feats, None, tuple(x.shape[-2:]))["psi"]
        else:
            psi = [f[:, :0] for f in feats[:4]]
        return (*feats, logits, deltas, *psi)


class MaskRCNNExport(ScriptedNet):
    """Traced dense network + scripted detection of one image (module docstring)."""

    def __init__(self, model: MaskRCNN, example: Tensor) -> None:
        model = model.eval()
        dense = _MaskRCNNDense(model).eval()
        with torch.no_grad():
            traced = torch.jit.trace(dense, _padded(example), check_trace=False)
        super().__init__(traced, [], 32, model.in_channels)
        rpn = model.rpn
        self.has_instances = True
        self.semiconv = hasattr(model, "embedding")
        self.cell_anchors = [a.clone() for a in rpn.anchor_generator.cell_anchors]
        self.pre_nms_top_n = int(rpn.pre_nms_top_n[1])  # the test-time counts
        self.post_nms_top_n = int(rpn.post_nms_top_n[1])
        self.rpn_nms_thresh = float(rpn.nms_thresh)
        self.rpn_min_size = float(rpn.min_size)
        w = rpn.box_coder.weights
        self.rpn_weights = (float(w[0]), float(w[1]), float(w[2]), float(w[3]))
        self.rpn_clip = float(rpn.box_coder.bbox_xform_clip)
        w = model.box_coder.weights
        self.box_weights = (float(w[0]), float(w[1]), float(w[2]), float(w[3]))
        self.box_clip = float(model.box_coder.bbox_xform_clip)
        self.box_head = model.box_head
        self.mask_head = model.mask_head
        self.num_classes = int(model.num_classes)
        self.canonical_scale = float(model.canonical_scale)
        self.score_thresh = float(model.box_score_thresh)
        self.nms_thresh = float(model.box_nms_thresh)
        self.detections_per_img = int(model.detections_per_img)
        self.strides = [int(s) for s in FPN_STRIDES[:4]]
        sigma = model.sigma.detach().clone() if self.semiconv else torch.ones(())
        self.register_buffer("sigma", sigma)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        """(boxes (N, 4), scores (N,), classes (N,), masks (N, H, W)) of one image."""
        with torch.no_grad():
            bx, sc, lab, masks, _ = self._detect(self._one(image))
        return bx, sc, lab, masks

    @torch.jit.export
    def seeds(self, image: Tensor) -> Tensor:
        """(N, 2) (y, x) seed positions of the semi-convolutional variant's detections (the
        eager ``Instances.centers``), in the order of ``forward``; (N, 0) for Mask R-CNN."""
        with torch.no_grad():
            seeds = self._detect(self._one(image))[4]
        return seeds

    def _one(self, image: Tensor) -> Tensor:
        image = self.check_image(image)
        if image.shape[0] != 1:
            raise ValueError(
                f"the exported detector takes one image (1, C, H, W), got a batch of "
                f"{image.shape[0]} (shape {list(image.shape)})"
            )
        return image

    def _detect(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        h, w = int(image.shape[-2]), int(image.shape[-1])
        x = F.pad(image, [0, (32 - w % 32) % 32, 0, (32 - h % 32) % 32])  # zeros, as the model
        o = self.net(x)
        feats = [o[0], o[1], o[2], o[3], o[4]]
        psi = [o[7], o[8], o[9], o[10]]
        anchors, counts = level_anchors(self.cell_anchors, feats, int(x.shape[-2]),
                                        int(x.shape[-1]))  # fmt: skip
        proposals = select_proposals(o[5], o[6], anchors, counts, (h, w),
                                     self.pre_nms_top_n, self.post_nms_top_n, self.rpn_nms_thresh,
                                     self.rpn_min_size, self.rpn_weights, self.rpn_clip)  # fmt: skip
        p4 = feats[:4]
        rois = boxes_to_rois(proposals)
        class_logits, box_deltas = self.box_head(
            pool_levels(p4, rois, 7, self.canonical_scale, 2, self.strides)
        )
        boxes, scores, labels = detect_boxes(proposals, class_logits, box_deltas, (h, w),
                                             self.num_classes, self.score_thresh, self.nms_thresh,
                                             self.detections_per_img, self.box_weights,
                                             self.box_clip)  # fmt: skip
        bx, sc, lab = boxes[0], scores[0], labels[0]
        rois = boxes_to_rois(boxes)
        logits = self.mask_head(pool_levels(p4, rois, 14, self.canonical_scale, 2, self.strides))
        logits = logits[torch.arange(lab.shape[0], device=logits.device), lab]
        seeds = bx[:, :0]
        if self.semiconv:
            m = int(logits.shape[-1])
            pr = pool_levels(psi, rois, m, self.canonical_scale, 2, self.strides)
            logits, _, weights, _ = mask_update(logits, pr, self.sigma)
            seeds = seed_positions(weights, bx)
        masks = paste_masks(torch.sigmoid(logits), bx, h, w, None)
        return bx, sc, lab, masks, seeds


def _padded(example: Tensor) -> Tensor:
    h, w = example.shape[-2:]
    return F.pad(example, (0, (-w) % 32, 0, (-h) % 32))


def instance_exporter(model: nn.Module):
    """The exporter class of an instance-returning model, or None when its family has none."""
    from instembed.models.isfcn import ISFCN

    if isinstance(model, MaskRCNN):
        return MaskRCNNExport
    if isinstance(model, ISFCN):
        return ISFCNExport
    return None


class _ISFCNNet(nn.Module):
    """What gets traced: backbone + decoder of a padded input -> (score maps, objectness)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.model.decoder(self.model.backbone.encoder(x))
        kk = self.model.k * self.model.k
        return y[:, :kk], y[:, kk:]


class ISFCNExport(ScriptedNet):
    """Traced ISFCN network (padded and cropped as the model does) + scripted dense windows,
    assembling and pasting (module docstring)."""

    def __init__(self, model: nn.Module, example: Tensor) -> None:
        model = model.eval()
        with torch.no_grad():
            traced = torch.jit.trace(_ISFCNNet(model).eval(), example, check_trace=False)
        super().__init__(traced, ["score_maps", "objectness"], model.size_divisor,
                         model.in_channels)  # fmt: skip
        self.has_instances = True
        self.window_sizes = [int(m) for m in model.window_sizes]
        self.k = int(model.k)
        self.stride = int(model.stride)
        self.min_score = float(model.min_score)
        self.max_candidates = int(model.max_candidates)

    @torch.jit.export
    def detect(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(masks (N, H, W) probabilities, scores (N,), centers (N, 2) window centres (y, x))
        of one image (1, C, H, W): the eager model's raw ``Outputs.instances[0]``."""
        with torch.no_grad():
            out = self.one_image(image)
            masks, scores, centers, _ = dense_candidates(
                out["score_maps"][0], out["objectness"][0], self.window_sizes, self.k,
                self.stride, self.min_score, self.max_candidates
            )  # fmt: skip
        return masks, scores, centers
