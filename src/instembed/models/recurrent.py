"""Recurrent attention (Ren & Zemel 2017, "End-to-End Instance Segmentation with Recurrent
Attention"): one object per step, attended with a box, segmented inside a glimpse, scored, and
written to an external memory (the canvas) that the next step sees.

The four parts, per step ``t`` (see docs/recurrent.md for the choices taken and why):

* **external memory** -- the canvas ``c_t`` (B, 1, H, W), the union (pixel-wise max) of the
  masks already produced; it enters the box network with the image features at every step;
* **box network** -- a ConvLSTM over ``[image features, canvas]`` (1/8 resolution); a soft
  spatial attention over its hidden state pools one feature vector and an expected location
  ``(y, x)``; an MLP turns them into the box (centre = expected location + offset, log size);
* **segmentation network** -- reads a fixed-size glimpse of ``[image, canvas, features, hidden
  state]`` inside the (context-expanded) box with a differentiable sampler
  (:mod:`instembed.models.glimpse`), predicts the object's mask there and pastes it back into
  image coordinates (the inverse sampling);
* **scoring network** -- an MLP on the pooled box and glimpse features: the probability that
  this step found an object. Inference stops once every image's score is below
  ``stop_thresh`` and never runs more than ``max_steps`` steps.

Training (``targets`` given, ``model.training``): the model runs ``min(max_steps, N + 1,
curriculum cap)`` steps (``N`` the largest object count of the batch: one extra step learns to
stop). The curriculum and teacher forcing follow ``self.train_step``, a buffer the model
increments on every training forward (saved in checkpoints; the trainer needs no hook).
Teacher forcing with probability ``p(step)`` per step: the glimpse is read at a ground-truth box
(the not-yet-segmented object whose box overlaps the predicted box most, else the largest one)
and that object's mask is written to the canvas.

Returns ``Outputs(instances=[Instances(masks=(T, H, W) soft, scores=(T,))] per image,
aux={"masks", "scores", "score_logits", "boxes", "num_steps", "forced"})`` (see
:class:`RecurrentAttention`); the loss is ``instembed.losses.recurrent``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instembed.models.glimpse import (
    box_iou_pairs,
    expand_boxes,
    glimpse_grid,
    paste_glimpse,
    read_glimpse_normalized,
)
from instembed.structures import Instances, Outputs


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _gn(cout), nn.ReLU(inplace=True)
    )


class ConvLSTMCell(nn.Module):
    """A convolutional LSTM cell (Shi et al. 2015): all four gates from one 3x3 convolution of
    ``[input, hidden]``."""

    def __init__(self, cin: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(cin + hidden, 4 * hidden, 3, padding=1)
        with torch.no_grad():  # forget gate biased open
            self.gates.bias.zero_()
            self.gates.bias[hidden : 2 * hidden].fill_(1.0)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        i, f, g, o = self.gates(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class SegmentationHead(nn.Module):
    """Glimpse -> mask logits (one down/up level U-Net) and a pooled feature for the scorer."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.inc = nn.Sequential(_block(cin, width), _block(width, width))
        self.down = nn.Sequential(_block(width, 2 * width, 2), _block(2 * width, 2 * width))
        self.up = nn.Sequential(_block(3 * width, width), _block(width, width))
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, g: Tensor) -> tuple[Tensor, Tensor]:
        a = self.inc(g)
        b = self.down(a)
        u = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        u = self.up(torch.cat([a, u], 1))
        return self.out(u), b.mean((2, 3))


class RecurrentAttention(nn.Module):
    """The recurrent-attention instance segmenter; see the module docstring.

    Args:
        in_channels: image channels.
        width: channels of the image encoder (its output has ``2 * width``).
        hidden: channels of the ConvLSTM state.
        glimpse: (gh, gw) glimpse size (int: square).
        context: the glimpse reads the predicted box scaled by this factor about its centre.
        max_steps: the most steps ever run (training and inference).
        stop_thresh: inference stops once every image's score is below it.
        min_box: smallest predicted box side as a fraction of the image's shorter side.
        curriculum_start, curriculum_every: in training, at most ``curriculum_start +
            train_step // curriculum_every`` steps (``curriculum_every = 0``: no cap).
        teacher_forcing, teacher_steps: probability of teacher forcing a step at training step
            0, decaying linearly to 0 at ``teacher_steps``.
        detach_canvas: no gradient through the canvas into earlier steps.
    """

    size_divisor = 8

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 16,
        hidden: int = 24,
        glimpse: int | tuple[int, int] = 24,
        context: float = 1.25,
        max_steps: int = 12,
        stop_thresh: float = 0.5,
        min_box: float = 0.04,
        curriculum_start: int = 3,
        curriculum_every: int = 0,
        teacher_forcing: float = 0.5,
        teacher_steps: int = 1000,
        detach_canvas: bool = True,
    ) -> None:
        super().__init__()
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.in_channels = int(in_channels)
        self.glimpse = (int(glimpse), int(glimpse)) if isinstance(glimpse, int) else tuple(glimpse)
        self.context = float(context)
        self.max_steps = int(max_steps)
        self.stop_thresh = float(stop_thresh)
        self.min_box = float(min_box)
        self.curriculum_start = int(curriculum_start)
        self.curriculum_every = int(curriculum_every)
        self.teacher_forcing = float(teacher_forcing)
        self.teacher_steps = int(teacher_steps)
        self.detach_canvas = bool(detach_canvas)
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))
        c = self.in_channels + 2  # + CoordConv (y, x) in [-1, 1]
        k = 2 * width
        self.encoder = nn.Sequential(
            _block(c, width, 2), _block(width, width, 2), _block(width, k, 2), _block(k, k)
        )
        self.canvas_in = nn.Conv2d(1, 8, 3, padding=1)
        self.lstm = ConvLSTMCell(k + 8 + 2, hidden)
        self.attend = nn.Conv2d(hidden, 1, 1)
        self.box_mlp = nn.Sequential(nn.Linear(hidden + 2, 64), nn.ReLU(inplace=True))
        self.box_out = nn.Linear(64, 4)  # (dy, dx) centre offset, log (h, w)
        with torch.no_grad():
            self.box_out.weight.mul_(0.1)
            self.box_out.bias.copy_(torch.tensor([0.0, 0.0, math.log(0.3), math.log(0.3)]))
        gin = self.in_channels + 1 + k + hidden
        self.seg = SegmentationHead(gin, width)
        self.score_mlp = nn.Sequential(
            nn.Linear(hidden + 2 * width + 1, 64), nn.ReLU(inplace=True), nn.Linear(64, 1)
        )

    # ----------------------------------------------------------------- schedules
    def teacher_probability(self, step: int | None = None) -> float:
        """Probability that a training step is teacher forced at training step ``step``."""
        s = int(self.train_step) if step is None else int(step)
        if self.teacher_steps <= 0:
            return 0.0
        return self.teacher_forcing * max(0.0, 1.0 - s / self.teacher_steps)

    def step_cap(self, step: int | None = None) -> int:
        """The most steps a training forward runs at training step ``step`` (curriculum)."""
        s = int(self.train_step) if step is None else int(step)
        if self.curriculum_every <= 0:
            return self.max_steps
        return min(self.max_steps, self.curriculum_start + s // self.curriculum_every)

    # ----------------------------------------------------------------- parts
    @staticmethod
    def _coords(b: int, h: int, w: int, ref: Tensor) -> Tensor:
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=ref.device, dtype=ref.dtype)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=ref.device, dtype=ref.dtype)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([yy, xx]).expand(b, 2, h, w)

    def _box(self, hid: Tensor, coords: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Box network head: (B, 4) box in pixels and the (B, hidden) pooled feature."""
        b = hid.shape[0]
        alpha = torch.softmax(self.attend(hid).flatten(1), 1)  # (B, h*w)
        pooled = torch.einsum("bn,bcn->bc", alpha, hid.flatten(2))
        loc = torch.einsum("bn,bcn->bc", alpha, coords.flatten(2))  # (B, 2) (y, x) in [-1, 1]
        z = self.box_out(self.box_mlp(torch.cat([pooled, loc], 1)))
        h, w = size
        cy = (loc[:, 0] + z[:, 0] + 1) * h / 2
        cx = (loc[:, 1] + z[:, 1] + 1) * w / 2
        lo = math.log(self.min_box)
        sh = torch.exp(z[:, 2].clamp(lo, 0.5)) * min(h, w)
        sw = torch.exp(z[:, 3].clamp(lo, 0.5)) * min(h, w)
        box = torch.stack([cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2], 1)
        return box, pooled.reshape(b, -1)

    @staticmethod
    def _teacher_pick(box: Tensor, tgt: dict, used: Tensor) -> int:
        """The ground-truth object a forced step attends: unused, best box overlap with the
        predicted box, ties broken towards the larger object; -1 when none is left."""
        if tgt["boxes"].shape[0] == 0 or bool(used.all()):
            return -1
        gt = tgt["boxes"].to(box.dtype)
        iou = box_iou_pairs(box.detach()[None], gt)
        area = (gt[:, 2:] - gt[:, :2]).prod(1)
        key = iou + 1e-3 * area / area.max().clamp(min=1)
        key = torch.where(used, torch.full_like(key, -1.0), key)
        return int(key.argmax())

    # ----------------------------------------------------------------- forward
    def forward(self, image: Tensor, coords_origin: Tensor | None = None, targets=None) -> Outputs:
        b, _, h, w = image.shape
        train = self.training and targets is not None
        if train:
            n_gt = max(int(t["masks"].shape[0]) for t in targets)
            steps = max(1, min(self.max_steps, n_gt + 1, self.step_cap()))
            p_force = self.teacher_probability()
            self.train_step += 1
        else:
            steps, p_force = self.max_steps, 0.0
        coords_full = self._coords(b, h, w, image)
        feat = self.encoder(torch.cat([image, coords_full], 1))
        fh, fw = feat.shape[-2:]
        coords = self._coords(b, fh, fw, feat)
        hid = feat.new_zeros(b, self.lstm.hidden, fh, fw)
        cell = torch.zeros_like(hid)
        canvas = image.new_zeros(b, 1, h, w)
        used = [torch.zeros(int(t["masks"].shape[0]), dtype=torch.bool) for t in targets or []]
        masks, logits, boxes, forced = [], [], [], []
        for _t in range(steps):
            cv = F.adaptive_avg_pool2d(canvas, (fh, fw))
            x = torch.cat([feat, self.canvas_in(cv), coords], 1)
            hid, cell = self.lstm(x, (hid, cell))
            box, pooled = self._box(hid, coords, (h, w))
            window = box
            force = train and bool(torch.rand(()) < p_force)
            picks = [-1] * b
            if force:
                picks = [self._teacher_pick(box[i], targets[i], used[i]) for i in range(b)]
                gt_box = torch.stack(
                    [
                        targets[i]["boxes"][k].to(box) if k >= 0 else box[i].detach()
                        for i, k in enumerate(picks)
                    ]
                )
                window = gt_box
            window = expand_boxes(window, self.context)
            grid = glimpse_grid(window, (h, w), self.glimpse)
            g = torch.cat(
                [
                    read_glimpse_normalized(torch.cat([image, canvas], 1), grid),
                    read_glimpse_normalized(torch.cat([feat, hid], 1), grid),
                ],
                1,
            )
            mlog, gfeat = self.seg(g)
            mask = paste_glimpse(torch.sigmoid(mlog), window, (h, w))[:, 0]  # (B, H, W)
            fill = mask.flatten(1).mean(1, keepdim=True)
            s_logit = self.score_mlp(torch.cat([pooled, gfeat, fill], 1))[:, 0]
            masks.append(mask)
            logits.append(s_logit)
            boxes.append(box)
            forced.append(force)
            write = mask.detach() if self.detach_canvas else mask
            if train:
                write = self._track_used(write, targets, used, picks)
            canvas = torch.maximum(canvas, write[:, None])
            if not train and bool((torch.sigmoid(s_logit) < self.stop_thresh).all()):
                break
        masks_t = torch.stack(masks, 1)  # (B, T, H, W)
        logits_t = torch.stack(logits, 1)  # (B, T)
        scores = torch.sigmoid(logits_t)
        inst = [Instances(masks=masks_t[i], scores=scores[i]) for i in range(b)]
        aux = {
            "masks": masks_t,
            "scores": scores,
            "score_logits": logits_t,
            "boxes": torch.stack(boxes, 1),
            "num_steps": len(masks),
            "forced": forced,
        }
        return Outputs(instances=inst, aux=aux)

    @staticmethod
    def _track_used(mask: Tensor, targets, used: list[Tensor], picks: list[int]) -> Tensor:
        """Mark the object each image's step took (the forced pick, else the unused object its
        mask overlaps most) and return the canvas update (the object's true mask when forced)."""
        out = []
        for i, t in enumerate(targets):
            gt = t["masks"]
            k = picks[i]
            if k < 0 and gt.shape[0] and not bool(used[i].all()):
                m = mask[i].detach()
                inter = (gt.to(m.dtype) * m).flatten(1).sum(1)
                union = gt.flatten(1).sum(1).to(m.dtype) + m.sum() - inter
                iou = torch.where(used[i].to(m.device), -1.0, inter / union.clamp(min=1e-6))
                if float(iou.max()) > 0.25:
                    used[i][int(iou.argmax())] = True
                out.append(mask[i])
                continue
            if k >= 0:
                used[i][k] = True
                out.append(gt[k].to(mask.dtype))
            else:
                out.append(mask[i])
        return torch.stack(out)


def build_recurrent_attention(in_channels: int = 1, **params) -> RecurrentAttention:
    """Builder of the ``"recurrent_attention"`` family (``MODELS``)."""
    return RecurrentAttention(in_channels=in_channels, **params)


PARAM_TYPES = {
    "width": int,
    "hidden": int,
    "glimpse": int,
    "context": float,
    "max_steps": int,
    "stop_thresh": float,
    "min_box": float,
    "curriculum_start": int,
    "curriculum_every": int,
    "teacher_forcing": float,
    "teacher_steps": int,
    "detach_canvas": bool,
}
"""Types of the family's config parameters (``model.params``)."""
