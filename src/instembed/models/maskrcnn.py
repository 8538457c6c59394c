"""Mask R-CNN (He et al. 2017), compact and CPU-sized: ResNet + FPN, RPN, RoI box and mask heads.

``model(image, coords_origin=None, targets=None) -> Outputs`` (docs/maskrcnn.md):

* **training** (``model.training`` and ``targets`` given): RPN targets and proposals, RoI
  sampling, box and mask heads on the sample; ``Outputs.aux`` holds what the ``maskrcnn`` loss
  reads (``rpn_*``, ``roi_class_logits`` (R, C+1), ``roi_box_deltas`` (R, C+1, 4),
  ``roi_labels`` (R,), ``roi_targets`` (R, 4), ``mask_logits`` (P, 28, 28) of the positive RoIs
  at their gt class, ``mask_targets`` (P, 28, 28) the gt masks RoIAligned on them). No
  instances are computed (as torchvision: losses in training, detections in evaluation).
* **otherwise**: ``Outputs.instances``, per image the raw detections: box decoding per class,
  ``box_score_thresh``, per-class NMS (``box_nms_thresh``), the ``detections_per_img`` best;
  soft masks (sigmoid of the predicted class's 28x28 logits) pasted into the image with
  :func:`~instembed.detection.masks.paste_masks` (``threshold=None``); ``classes`` only when
  ``num_classes > 1``. The
  ``"detections"`` post-processing thresholds and suppresses them.

Levels: the RoIs are pooled from P2..P5 (``multiscale_roi_align``) at level
``k = floor(k0 + log2(sqrt(wh) / canonical_scale))`` clamped to [2, 5], ``k0 = 4``;
``canonical_scale`` is 224 in the paper (ImageNet-sized objects); the default here, 56, suits
small microscopy objects (a 56-pixel object is pooled from P4, a 14-pixel one from P2).
RoIAlign runs with ``aligned=True`` (detectron2's ROIAlignV2, pixel-edge boxes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instembed.detection import (
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
    roi_align,
)
from instembed.detection.boxes import decode_boxes
from instembed.detection.masks import paste_masks
from instembed.detection.pooling import roi_align_rois
from instembed.models.fpn import FPN_STRIDES, ResNetFPN
from instembed.models.rpn import RPN
from instembed.structures import Instances, Outputs

MASKRCNN_PARAM_TYPES: dict[str, Any] = {
    "num_classes": int,
    "widths": list[int],
    "blocks": list[int],
    "fpn_channels": int,
    "norm": str,
    "anchor_sizes": list[int],
    "aspect_ratios": list[float],
    "rpn_pre_nms_top_n": list[int],
    "rpn_post_nms_top_n": list[int],
    "rpn_batch_size_per_image": int,
    "box_batch_size_per_image": int,
    "box_positive_fraction": float,
    "representation_size": int,
    "mask_channels": int,
    "canonical_scale": float,
    "box_score_thresh": float,
    "box_nms_thresh": float,
    "detections_per_img": int,
}
"""Types of the ``maskrcnn`` family's parameters (checked on config load)."""


# --------------------------------------------------------------------------- pooling
def assign_levels(boxes: Tensor, canonical_scale: float = 56.0, k0: int = 4) -> Tensor:
    """FPN level index 0..3 (P2..P5) of (R, 4) boxes: ``floor(k0 + log2(sqrt(wh) / s0))``
    clamped to [2, 5], minus 2."""
    wh = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    s = torch.sqrt(wh).clamp(min=1e-6)
    k = torch.floor(k0 + torch.log2(s / float(canonical_scale)) + 1e-6)
    return (k.clamp(2, 5) - 2).long()


def multiscale_roi_align(
    feats: Sequence[Tensor],
    boxes: Sequence[Tensor],
    output_size: int,
    canonical_scale: float = 56.0,
    sampling_ratio: int = 2,
    strides: Sequence[int] = FPN_STRIDES[:4],
) -> Tensor:
    """(R, C, o, o) features of the per-image boxes (in image pixels, R = sum of their counts),
    each pooled from the level :func:`assign_levels` gives it (``feats`` = P2..P5)."""
    rois = boxes_to_rois(list(boxes))
    return pool_levels(list(feats), rois, output_size, float(canonical_scale), int(sampling_ratio),
                       [int(s) for s in strides])  # fmt: skip


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """(R, 5) ``(image index, x1, y1, x2, y2)`` of per-image (K_i, 4) boxes."""
    return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])


def pool_levels(
    feats: list[Tensor],
    rois: Tensor,
    output_size: int,
    canonical_scale: float,
    sampling_ratio: int,
    strides: list[int],
) -> Tensor:
    """:func:`multiscale_roi_align` of (R, 5) ``rois`` (TorchScript compiles it)."""
    levels = assign_levels(rois[:, 1:], canonical_scale)
    c = feats[0].shape[1]
    out = feats[0].new_zeros((rois.shape[0], c, output_size, output_size))
    for lvl in range(len(feats)):
        idx = torch.nonzero(levels == lvl).squeeze(1)
        if idx.numel() > 0:
            out[idx] = roi_align_rois(feats[lvl], rois[idx], output_size, output_size,
                                      1.0 / strides[lvl], sampling_ratio, True)  # fmt: skip
    return out


def detect_boxes(
    proposals: list[Tensor],
    class_logits: Tensor,
    box_deltas: Tensor,
    image_size: tuple[int, int],
    num_classes: int,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    weights: tuple[float, float, float, float],
    bbox_xform_clip: float,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per image, the boxes, scores and class ids of the detections (the module doc's
    inference) from the box head's outputs on the concatenated proposals (TorchScript
    compiles it)."""
    scores_all = F.softmax(class_logits, -1)
    counts = [int(p.shape[0]) for p in proposals]
    nc = num_classes
    boxes_out: list[Tensor] = []
    scores_out: list[Tensor] = []
    labels_out: list[Tensor] = []
    for p, sc, dl in zip(proposals, scores_all.split(counts), box_deltas.split(counts)):
        n = int(p.shape[0])
        bx = decode_boxes(dl.reshape(n, -1), p, weights, bbox_xform_clip).view(n, -1, 4)
        bx = clip_boxes_to_image(bx[:, 1:], image_size).reshape(-1, 4)
        lab = torch.arange(1, nc + 1, device=p.device).repeat(n)
        sc = sc[:, 1:].reshape(-1)
        keep = torch.nonzero(sc > score_thresh).squeeze(1)
        bx, sc, lab = bx[keep], sc[keep], lab[keep]
        keep = remove_small_boxes(bx, 1e-2)
        bx, sc, lab = bx[keep], sc[keep], lab[keep]
        keep = batched_nms(bx, sc, lab, nms_thresh)[:detections_per_img]
        boxes_out.append(bx[keep])
        scores_out.append(sc[keep])
        labels_out.append(lab[keep])
    return boxes_out, scores_out, labels_out


# --------------------------------------------------------------------------- heads
class BoxHead(nn.Module):
    """2 FC layers (``representation_size``) on 7x7 RoI features, then class logits (C + 1,
    background 0) and per-class box deltas ((C + 1) x 4)."""

    def __init__(self, channels: int, num_classes: int, rep: int = 256, pool: int = 7) -> None:
        super().__init__()
        self.fc6 = nn.Linear(channels * pool * pool, rep)
        self.fc7 = nn.Linear(rep, rep)
        self.cls_score = nn.Linear(rep, num_classes + 1)
        self.bbox_pred = nn.Linear(rep, 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.relu(self.fc7(torch.relu(self.fc6(x.flatten(1)))))
        return self.cls_score(x), self.bbox_pred(x).view(x.shape[0], -1, 4)


class MaskHead(nn.Module):
    """4 x (3x3 conv + ReLU) on 14x14 RoI features, 2x2 stride-2 deconv + ReLU, 1x1 conv to one
    28x28 logit map per class (C + 1, index = class id)."""

    def __init__(self, channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for _ in range(4):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True)]
            cin = width
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.logits = nn.Conv2d(width, num_classes + 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(torch.relu(self.deconv(self.convs(x))))


# --------------------------------------------------------------------------- targets
def prepare_targets(
    targets: Sequence[dict], image_size: tuple[int, int], num_classes: int, device
) -> list[dict[str, Tensor]]:
    """Per image ``boxes`` (N, 4) float, ``masks`` (N, H, W) float, ``classes`` (N,) long of the
    usable objects: boxes clipped to the image; objects whose clipped box has zero width or
    height, or whose mask is empty, are dropped (they cannot be matched). Wrong shapes or class
    ids raise ``ValueError``."""
    h, w = image_size
    out = []
    for i, t in enumerate(targets):
        masks, boxes = t["masks"], t["boxes"]
        if masks.ndim != 3 or tuple(masks.shape[1:]) != (h, w):
            raise ValueError(
                f"targets[{i}]['masks'] must be (N, {h}, {w}) for a {h}x{w} image, "
                f"got {tuple(masks.shape)}"
            )
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != masks.shape[0]:
            raise ValueError(
                f"targets[{i}]['boxes'] must be (N, 4) with N = {masks.shape[0]} masks, "
                f"got {tuple(boxes.shape)}"
            )
        classes = t.get("classes")
        if classes is None:
            classes = torch.ones(masks.shape[0], dtype=torch.long, device=device)
        classes = classes.to(device=device, dtype=torch.long).reshape(-1)
        if classes.numel() != masks.shape[0]:
            raise ValueError(f"targets[{i}]['classes'] has {classes.numel()} entries for "
                             f"{masks.shape[0]} masks")  # fmt: skip
        if classes.numel() and (int(classes.min()) < 1 or int(classes.max()) > num_classes):
            raise ValueError(
                f"targets[{i}]['classes'] must lie in 1..{num_classes} (0 is background), "
                f"got {sorted(set(classes.tolist()))}"
            )
        b = clip_boxes_to_image(boxes.to(device=device, dtype=torch.float32), (h, w))
        if not torch.isfinite(b).all():
            raise ValueError(f"targets[{i}]['boxes'] has non-finite values")
        m = masks.to(device)
        keep = ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])) & m.flatten(1).any(1)
        out.append({"boxes": b[keep], "masks": m[keep].float(), "classes": classes[keep]})
    return out


# --------------------------------------------------------------------------- the model
class MaskRCNN(nn.Module):
    """ResNet-FPN + :class:`~instembed.models.rpn.RPN` + box and mask heads (module doc)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1, 1),
        fpn_channels: int = 32,
        norm: str = "group",
        anchor_sizes: Sequence[int] = (8, 16, 32, 64, 128),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n: Sequence[int] = (600, 300),
        rpn_post_nms_top_n: Sequence[int] = (300, 100),
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        representation_size: int = 256,
        mask_channels: int = 64,
        canonical_scale: float = 56.0,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1 (object classes), got {num_classes}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.backbone = ResNetFPN(in_channels, widths, blocks, fpn_channels, norm=norm)
        c = self.backbone.out_channels
        self.rpn = RPN(c, anchor_sizes, aspect_ratios, tuple(rpn_pre_nms_top_n),
                       tuple(rpn_post_nms_top_n),
                       batch_size_per_image=rpn_batch_size_per_image)  # fmt: skip
        self.box_head = BoxHead(c, self.num_classes, int(representation_size))
        self.mask_head = MaskHead(c, self.num_classes, int(mask_channels))
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.matcher = Matcher(0.5, 0.5, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(
            int(box_batch_size_per_image), float(box_positive_fraction)
        )
        self.canonical_scale = float(canonical_scale)
        self.box_score_thresh = float(box_score_thresh)
        self.box_nms_thresh = float(box_nms_thresh)
        self.detections_per_img = int(detections_per_img)

    # ----------------------------------------------------------------- hooks
    def extra_features(self, feats: list[Tensor], coords_origin, image_size) -> dict[str, Any]:
        """Features beyond the FPN that the mask step needs (the semi-conv variant's
        embedding); none here."""
        return {}

    def mask_logits(
        self, logits: Tensor, boxes: Sequence[Tensor], extra: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The final (P, 28, 28) mask logits from the mask head's logits of the chosen class
        (identity here) and extra training entries for ``aux``."""
        return logits, {}

    # ----------------------------------------------------------------- forward
    def forward(self, image: Tensor, coords_origin=None, targets=None) -> Outputs:
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(
                f"MaskRCNN expects (B, {self.in_channels}, H, W) images, got {tuple(image.shape)}"
            )
        h, w = int(image.shape[-2]), int(image.shape[-1])
        x = F.pad(image, (0, (-w) % 32, 0, (-h) % 32))  # zeros at the bottom / right
        feats = self.backbone(x)  # P2..P6
        extra = self.extra_features(feats, coords_origin, (h, w))
        training = self.training and targets is not None
        gt = None
        if training:
            if len(targets) != image.shape[0]:
                raise ValueError(f"{len(targets)} targets for {image.shape[0]} images")
            gt = prepare_targets(targets, (h, w), self.num_classes, image.device)
        proposals, aux = self.rpn(
            x, feats, (h, w), None if gt is None else [g["boxes"] for g in gt]
        )
        if training:
            aux.update(self._train_heads(feats[:4], proposals, gt, extra))
            aux.update(extra.get("aux", {}))
            return Outputs(aux=aux)
        return Outputs(instances=self._detect(feats[:4], proposals, (h, w), extra))

    def _pool(self, feats, boxes, size: int) -> Tensor:
        return multiscale_roi_align(feats, boxes, size, self.canonical_scale)

    def _train_heads(self, feats, proposals, gt, extra) -> dict[str, Tensor]:
        boxes, labels, targets, pos_boxes, pos_labels = [], [], [], [], []
        mask_targets = []
        for props, g in zip(proposals, gt):
            props = torch.cat([props, g["boxes"]])
            if g["boxes"].numel() == 0:  # no object: every proposal is background
                idx = torch.full((len(props),), -1, dtype=torch.long, device=props.device)
                lab = torch.zeros_like(idx)
            else:
                idx = self.matcher(box_iou(g["boxes"], props))
                lab = torch.where(idx >= 0, g["classes"][idx.clamp(min=0)], torch.zeros_like(idx))
            pos, neg = self.sampler([lab])
            keep = torch.nonzero(pos[0].bool() | neg[0].bool()).squeeze(1)
            props, lab, idx = props[keep], lab[keep], idx[keep]
            matched = g["boxes"][idx.clamp(min=0)] if g["boxes"].numel() else props
            boxes.append(props)
            labels.append(lab)
            targets.append(self.box_coder.encode_single(matched, props))
            p = lab > 0
            pos_boxes.append(props[p])
            pos_labels.append(lab[p])
            rois = torch.cat([idx[p, None].to(props.dtype), props[p]], 1)
            gm = g["masks"][:, None] if g["masks"].numel() else props.new_zeros(1, 1, 1, 1)
            mask_targets.append(roi_align(gm, rois, 28, 1.0, 0, aligned=True)[:, 0])
        class_logits, box_deltas = self.box_head(self._pool(feats, boxes, 7))
        pos_labels_all = torch.cat(pos_labels)
        logits = self.mask_head(self._pool(feats, pos_boxes, 14))
        logits = logits[torch.arange(len(pos_labels_all), device=logits.device), pos_labels_all]
        logits, mask_aux = self.mask_logits(logits, pos_boxes, extra)
        return {
            "roi_class_logits": class_logits,
            "roi_box_deltas": box_deltas,
            "roi_labels": torch.cat(labels),
            "roi_targets": torch.cat(targets),
            "mask_logits": logits,
            "mask_targets": torch.cat(mask_targets).clamp(0, 1),
            **mask_aux,
        }

    @torch.no_grad()
    def _detect(self, feats, proposals, image_size, extra) -> list[Instances]:
        class_logits, box_deltas = self.box_head(self._pool(feats, proposals, 7))
        nc = self.num_classes
        coder = self.box_coder
        boxes_out, scores_out, labels_out = detect_boxes(
            list(proposals), class_logits, box_deltas, image_size, nc, self.box_score_thresh,
            self.box_nms_thresh, self.detections_per_img, coder.weights, coder.bbox_xform_clip
        )  # fmt: skip
        lab_all = torch.cat(labels_out)
        logits = self.mask_head(self._pool(feats, boxes_out, 14))
        logits = logits[torch.arange(len(lab_all), device=logits.device), lab_all]
        logits, info = self.mask_logits(logits, boxes_out, extra)
        counts = [len(b) for b in boxes_out]
        probs = torch.sigmoid(logits).split(counts)
        centers = info["seed_yx"].split(counts) if "seed_yx" in info else [None] * len(counts)
        out = []
        for bx, sc, lab, pr, ct in zip(boxes_out, scores_out, labels_out, probs, centers):
            masks = paste_masks(pr, bx, int(image_size[0]), int(image_size[1]), None)
            out.append(Instances(masks=masks, scores=sc, boxes=bx, centers=ct,
                                 classes=lab if nc > 1 else None))  # fmt: skip
        return out


def build_maskrcnn(in_channels: int = 1, **params) -> MaskRCNN:
    """The ``maskrcnn`` family (parameters: :data:`MASKRCNN_PARAM_TYPES`)."""
    return MaskRCNN(in_channels=in_channels, **params)
