"""Region Proposal Network (Ren et al. 2015) over FPN levels, as Mask R-CNN uses it.

:class:`RPNHead`: a 3x3 conv + ReLU, then a 1x1 conv to one objectness logit per anchor and one
to 4 box deltas per anchor; the same head on every level. Anchors (:class:`AnchorGenerator`):
one size per level, three aspect ratios.

Proposals (every call): per image and level the ``pre_nms_top_n`` best anchors by objectness,
their deltas decoded (``BoxCoder((1, 1, 1, 1))``), clipped to the image, boxes smaller than
``min_size`` removed, NMS (``nms_thresh``) per level, then the ``post_nms_top_n`` best over all
levels. (torchvision keeps ``post_nms_top_n`` per image; detectron2 per level in training;
we follow torchvision.) Both counts are ``(train, test)`` pairs. Scores and boxes are detached:
the RoI heads do not back-propagate into the proposals' coordinates.

Training targets (``gt_boxes`` given): ``Matcher(fg_iou, bg_iou, allow_low_quality_matches)``
on the IoU of gt boxes and anchors; label 1 for a match, 0 below ``bg_iou``, ignored between;
``BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)`` keeps a sample; the
rest is marked -1. An image without gt boxes has only negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from instembed.detection import (
    AnchorGenerator,
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)
from instembed.detection.anchors import shifted_anchors
from instembed.detection.boxes import decode_boxes


class RPNHead(nn.Module):
    """3x3 conv + ReLU, 1x1 objectness logits (A per location) and 1x1 deltas (4 A)."""

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for f in feats:
            t = torch.relu(self.conv(f))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def flatten_levels(logits: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(B, A, H, W) logits and (B, 4A, H, W) deltas per level -> (B, N) and (B, N, 4), in the
    anchors' order (level, position row-major, cell anchor)."""
    out_l: list[Tensor] = []
    out_d: list[Tensor] = []
    for lg, dl in zip(logits, deltas):
        b, a, h, w = lg.shape[0], lg.shape[1], lg.shape[2], lg.shape[3]
        out_l.append(lg.permute(0, 2, 3, 1).reshape(b, -1))
        out_d.append(dl.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
    return torch.cat(out_l, 1), torch.cat(out_d, 1)


def level_anchors(
    cell_anchors: list[Tensor], feats: list[Tensor], height: int, width: int
) -> tuple[Tensor, list[int]]:
    """The anchors of :class:`~instembed.detection.AnchorGenerator` for the feature maps of a
    (padded) ``height x width`` input, all levels concatenated, and the count per level
    (TorchScript compiles it)."""
    levels: list[Tensor] = []
    counts: list[int] = []
    for base, f in zip(cell_anchors, feats):
        gh, gw = int(f.shape[-2]), int(f.shape[-1])
        base = base.to(dtype=f.dtype, device=f.device)
        levels.append(shifted_anchors(base, gh, gw, height // gh, width // gw))
        counts.append(int(base.shape[0]) * gh * gw)
    return torch.cat(levels), counts


def select_proposals(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    counts: list[int],
    image_size: tuple[int, int],
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    min_size: float,
    weights: tuple[float, float, float, float],
    bbox_xform_clip: float,
) -> list[Tensor]:
    """Per image, the (K_i, 4) proposals from (B, N) objectness logits and (B, N, 4) deltas of
    the (N, 4) anchors (``counts`` per level): the module doc's selection (TorchScript compiles
    it)."""
    b = logits.shape[0]
    boxes = decode_boxes(deltas.reshape(-1, 4), anchors.repeat(b, 1), weights, bbox_xform_clip)
    boxes = boxes.view(b, -1, 4)
    level_ids = torch.cat(
        [torch.full((n,), i, dtype=torch.long, device=logits.device)
         for i, n in enumerate(counts)]
    )  # fmt: skip
    out: list[Tensor] = []
    for i in range(b):
        keep_idx: list[Tensor] = []
        start = 0
        for n in counts:
            k = min(pre_nms_top_n, n)
            keep_idx.append(logits[i, start : start + n].topk(k).indices + start)
            start += n
        idx = torch.cat(keep_idx)
        bx = clip_boxes_to_image(boxes[i, idx], image_size)
        sc, lv = logits[i, idx], level_ids[idx]
        keep = remove_small_boxes(bx, min_size)
        bx, sc, lv = bx[keep], sc[keep], lv[keep]
        keep = batched_nms(bx, sc, lv, nms_thresh)[:post_nms_top_n]
        out.append(bx[keep])
    return out


class RPN(nn.Module):
    """Anchors + :class:`RPNHead` + proposal selection + training targets (module doc)."""

    def __init__(
        self,
        channels: int,
        anchor_sizes: Sequence[int] = (8, 16, 32, 64, 128),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        pre_nms_top_n: tuple[int, int] = (600, 300),
        post_nms_top_n: tuple[int, int] = (300, 100),
        nms_thresh: float = 0.7,
        fg_iou: float = 0.7,
        bg_iou: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        min_size: float = 1e-3,
    ) -> None:
        super().__init__()
        self.anchor_generator = AnchorGenerator(
            tuple((int(s),) for s in anchor_sizes), tuple(float(r) for r in aspect_ratios)
        )
        self.head = RPNHead(channels, self.anchor_generator.num_anchors_per_location()[0])
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n = tuple(int(n) for n in pre_nms_top_n)
        self.post_nms_top_n = tuple(int(n) for n in post_nms_top_n)
        self.nms_thresh = float(nms_thresh)
        self.min_size = float(min_size)

    def forward(
        self,
        images: Tensor,
        feats: Sequence[Tensor],
        image_size: tuple[int, int],
        gt_boxes: Sequence[Tensor] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals per image ((K_i, 4), detached) and, with ``gt_boxes``, the training
        entries of ``Outputs.aux``: ``rpn_logits`` (B, N), ``rpn_deltas`` (B, N, 4),
        ``rpn_labels`` (B, N) (1 sampled positive, 0 sampled negative, -1 left out),
        ``rpn_targets`` (B, N, 4) and ``anchors`` (N, 4)."""
        if len(feats) != len(self.anchor_generator.sizes):
            raise ValueError(
                f"RPN has {len(self.anchor_generator.sizes)} anchor sizes for {len(feats)} levels"
            )
        logits_l, deltas_l = self.head(feats)
        anchors = self.anchor_generator(images, feats)[0]  # same for every image
        counts = [int(t[0].numel()) for t in logits_l]
        logits, deltas = flatten_levels(logits_l, deltas_l)
        training = gt_boxes is not None
        proposals = self._proposals(logits.detach(), deltas.detach(), anchors, counts, image_size,
                                    training)  # fmt: skip
        if not training:
            return proposals, {}
        labels, targets = self._targets(anchors, gt_boxes)
        aux = {"rpn_logits": logits, "rpn_deltas": deltas, "rpn_labels": labels,
               "rpn_targets": targets, "anchors": anchors}  # fmt: skip
        return proposals, aux

    def _proposals(self, logits, deltas, anchors, counts, image_size, training) -> list[Tensor]:
        coder = self.box_coder
        return select_proposals(logits, deltas, anchors, counts, image_size,
                                self.pre_nms_top_n[0 if training else 1],
                                self.post_nms_top_n[0 if training else 1], self.nms_thresh,
                                self.min_size, coder.weights, coder.bbox_xform_clip)  # fmt: skip

    def _targets(self, anchors: Tensor, gt_boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        labels_all, matched_all = [], []
        for gt in gt_boxes:
            if gt.numel() == 0:
                labels_all.append(torch.zeros(len(anchors), device=anchors.device))
                matched_all.append(anchors)  # zero targets, unused
                continue
            idx = self.matcher(box_iou(gt.to(anchors.dtype), anchors))
            matched_all.append(gt.to(anchors.dtype)[idx.clamp(min=0)])
            lab = (idx >= 0).to(anchors.dtype)
            lab[idx == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels_all.append(lab)
        pos, neg = self.sampler([lab.long() for lab in labels_all])
        labels = torch.full((len(gt_boxes), len(anchors)), -1.0, device=anchors.device)
        for i, (p, n) in enumerate(zip(pos, neg)):
            labels[i][n.bool()] = 0.0
            labels[i][p.bool()] = 1.0
        targets = torch.stack(
            [self.box_coder.encode_single(m, anchors) for m in matched_all]
        )  # anchors have positive size; targets of unmatched anchors are unused
        return labels, targets
