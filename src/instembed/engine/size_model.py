"""Object size from the look of an image: a linear regression on pooled encoder features.

A model trained on one object size splits objects much larger than that into pieces of about the
training size, so the size of what it finds says little about the objects (the limit of
:func:`instembed.data.sizes.auto_search` alone). The texture the network's encoder sees does
change with the magnification. As Cellpose's size model (Stringer et al. 2021, "Cellpose: a
generalist algorithm for cellular segmentation", the linear regression from the style vector to
the diameter), :class:`SizeModel` regresses the log of an image's median object diameter on
the spatial mean and standard deviation of each encoder level's feature maps (levels 1 and
deeper), fitted by ridge regression on the training images shown at several scales
(:func:`fit_size_model`; the target at scale ``s`` is ``log(s * diameter)``). The trained
network is not changed.

Prediction with ``scale="auto"`` asks the size model first when the model has one
(:class:`instembed.engine.predict.Predictor`); the predicted diameter sets the factor of the
first pass (:func:`instembed.data.sizes.start_scale`), and the measured-size search goes on from
there.

Features are taken on the central crop of at most :data:`CROP` pixels a side (of the image
resized by the scale), so a huge image costs no more than a large one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

#: the scales each training image is shown at when the size model is fitted
FIT_SCALES = (0.5, 0.71, 1.0, 1.41, 2.0)
#: ridge penalty on the standardised features
RIDGE = 10.0
#: at most this many training images are used to fit it
FIT_IMAGES = 48
#: features are pooled over the central crop of at most this many pixels a side
CROP = 1024


def _encoder(model: nn.Module):
    enc = getattr(getattr(model, "backbone", None), "encoder", None)
    if enc is None:
        raise TypeError(
            "a size model needs a network whose backbone has an encoder giving feature maps "
            f"(the U-Net of the embedding models); got {type(model).__name__} with backbone "
            f"{type(getattr(model, 'backbone', None)).__name__}"
        )
    return enc


def _divisor(model: nn.Module) -> int:
    return int(getattr(getattr(model, "backbone", None), "size_divisor", 1) or 1)


@torch.no_grad()
def encoder_features(model: nn.Module, image, scale: float = 1.0) -> np.ndarray:
    """Mean and standard deviation over space of each encoder level below full resolution, for
    ``image`` (C, H, W) resized by ``scale`` (bilinear, antialiased when shrinking) and cropped
    to its central :data:`CROP` x :data:`CROP` pixels; one vector (float64)."""
    from instembed.engine.predict import resize_image, scaled_size
    from instembed.models.blocks import pad_to_multiple

    enc = _encoder(model)
    param = next(model.parameters())
    if isinstance(image, torch.Tensor):
        x = image.detach().float().to(param.device)
    else:
        x = torch.as_tensor(np.asarray(image, np.float32)).to(param.device)
    if x.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(x.shape)}")
    x = resize_image(x, scaled_size(tuple(x.shape[-2:]), scale))[None]
    h, w = x.shape[-2:]
    top, left = max(0, (h - CROP) // 2), max(0, (w - CROP) // 2)
    x, _ = pad_to_multiple(x[..., top : top + CROP, left : left + CROP], _divisor(model))
    was_training = model.training
    model.eval()
    try:
        feats = enc(x)
    finally:
        model.train(was_training)
    parts = []
    for f in list(feats)[1:] or list(feats):
        parts += [f.mean((0, 2, 3)), f.std((0, 2, 3), unbiased=False)]
    return torch.cat(parts).double().cpu().numpy()


@dataclass
class SizeModel:
    """``log(diameter) = ((features - mean) / std) @ weights + bias`` (diameter in pixels of
    the image the features were taken on)."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float
    ridge: float = RIDGE
    n_images: int = 0
    scales: tuple[float, ...] = FIT_SCALES

    def predict_log(self, features: np.ndarray) -> float:
        f = np.asarray(features, np.float64)
        if f.shape != self.mean.shape:
            raise ValueError(
                f"size model: expected {self.mean.shape[0]} features (the network it was "
                f"fitted with), got {f.shape}"
            )
        return float(((f - self.mean) / self.std) @ self.weights + self.bias)

    def diameter(self, model: nn.Module, image) -> float:
        """Predicted median object diameter (pixels) of ``image`` as it is."""
        return math.exp(self.predict_log(encoder_features(model, image)))

    def to_dict(self) -> dict:
        """Plain lists and numbers (what a checkpoint read with ``weights_only`` holds)."""
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "weights": [float(v) for v in self.weights],
            "bias": float(self.bias),
            "ridge": float(self.ridge),
            "n_images": int(self.n_images),
            "scales": [float(s) for s in self.scales],
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "checkpoint") -> SizeModel:
        try:
            mean, std, weights = (np.asarray(d[k], np.float64) for k in ("mean", "std", "weights"))
            bias = float(d["bias"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{source}: size_model must hold mean, std, weights (equal-length number lists) "
                f"and bias; {type(err).__name__}: {err}"
            ) from None
        if not (mean.ndim == 1 and mean.shape == std.shape == weights.shape) or np.any(std <= 0):
            raise ValueError(
                f"{source}: size_model mean / std / weights must be equal-length vectors with "
                f"std > 0; got lengths {mean.size} / {std.size} / {weights.size}"
            )
        return cls(
            mean,
            std,
            weights,
            bias,
            float(d.get("ridge", RIDGE)),
            int(d.get("n_images", 0)),
            tuple(float(s) for s in d.get("scales", FIT_SCALES)),
        )


def ridge_fit(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE):
    """``(mean, std, weights, bias)`` of the ridge regression of ``y`` on the standardised
    columns of ``x`` (intercept not penalised: ``bias`` is the mean of ``y``); constant columns
    get std 1 (and weight 0)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] < 2:
        raise ValueError(f"expected x (n >= 2, d) and y (n,), got {x.shape} and {y.shape}")
    mean = x.mean(0)
    std = x.std(0)
    std[std < 1e-12] = 1.0
    z = (x - mean) / std
    bias = float(y.mean())
    a = z.T @ z + ridge * np.eye(z.shape[1])
    weights = np.linalg.solve(a, z.T @ (y - bias))
    return mean, std, weights, bias


def fit_size_model(
    model: nn.Module,
    samples: Sequence,
    scales: Sequence[float] = FIT_SCALES,
    ridge: float = RIDGE,
    max_images: int = FIT_IMAGES,
) -> SizeModel | None:
    """Fit a :class:`SizeModel` for ``model`` on ``samples`` (Samples: ``image`` and
    ``instances``; at most ``max_images`` of them, evenly spaced, those without objects left
    out), each shown at every scale of ``scales``. None (logged) when fewer than two images hold
    objects."""
    from instembed.data.sizes import image_diameter

    picks = np.unique(np.linspace(0, len(samples) - 1, min(len(samples), max_images)).astype(int))
    rows, targets, used = [], [], 0
    for i in picks:
        s = samples[int(i)]
        d = image_diameter(s.instances)
        if not math.isfinite(d) or d <= 0:
            continue
        used += 1
        for scale in scales:
            rows.append(encoder_features(model, s.image, scale))
            targets.append(math.log(d * scale))
    if used < 2:
        log.info("size model not fitted: %d training image(s) with objects", used)
        return None
    mean, std, weights, bias = ridge_fit(np.stack(rows), np.array(targets), ridge)
    sm = SizeModel(mean, std, weights, bias, ridge, used, tuple(float(s) for s in scales))
    resid = np.array([sm.predict_log(r) for r in rows]) - np.array(targets)
    log.info(
        "size model fitted on %d image(s) x %d scales: log-diameter residual median |%.3f|, "
        "max |%.3f|",
        used,
        len(scales),
        float(np.median(np.abs(resid))),
        float(np.max(np.abs(resid))),
    )
    return sm


def add_to_checkpoint(path, samples: Sequence, **fit_params) -> SizeModel | None:
    """Fit a size model for the weights in checkpoint ``path`` on ``samples`` (the training
    images: :func:`fit_size_model`, ``fit_params`` passed on) and store it in the checkpoint,
    everything else in it kept. Returns the fitted model, or None (the checkpoint unchanged)
    when too few images hold objects."""
    from instembed.engine import checkpoint as ck
    from instembed.engine.predict import model_from_checkpoint

    state = ck.load_checkpoint(path, map_location="cpu")
    model, _ = model_from_checkpoint(state, path)
    sm = fit_size_model(model.eval(), samples, **fit_params)
    if sm is not None:
        state["size_model"] = sm.to_dict()
        ck.atomic_save(state, path)
    return sm
