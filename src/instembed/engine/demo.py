"""The coloring dilemma (Novotny et al., ECCV 2018, Sec. 3 / Fig. 3) in a few CPU minutes.

Identical dots on a regular grid. A fully convolutional network is translation equivariant: two
dots that look the same (same surroundings within the receptive field) get the same embeddings,
so no clustering can tell them apart -- the plain *convolutional* embedding fails whatever the
loss. Adding the pixel position, ``Psi_u = Phi_u + u`` (the *semi-convolutional* operator), lets
the network solve the task by learning ``Phi_u`` = the offset from ``u`` to its dot's centre,
which a convolution can compute locally.

Protocol: the same network (a U-Net with one pooling level, 2-D embedding so the embedding space
can be drawn as in De Brabandere et al. 2017, Fig. 5) and the same discriminative loss train both
models on synthetic dot grids through :class:`~instembed.engine.trainer.Trainer`; the only
difference is ``model.semiconv``. Test images are larger dot grids never seen in training; the
foreground is taken from the ground truth and its embeddings are clustered by k-means with the
true number of dots (Novotny's evaluation of the dilemma), then scored with the adjusted Rand
index over foreground pixels and COCO AP (:mod:`instembed.metrics`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from instembed.engine.config import Config, config_from_dict
from instembed.structures import Instances

log = logging.getLogger(__name__)

MODELS = ("conv", "semiconv")
SPACING = 14  # dot grid period (pixels)
COORD_SCALE = 1.0 / SPACING  # neighbouring dot centres are 1 embedding unit apart


def demo_config(semiconv: bool, steps: int, seed: int = 0) -> Config:
    """The training config of one demo model (identical except ``model.semiconv``)."""
    return config_from_dict(
        {
            "data": {
                "synth": "dot_grid",
                "synth_params": {"radius": 4, "spacing": SPACING},
                "n_train": 64,
                "n_val": 0,
                "size": [64, 64],
                "crop": [48, 48],
                "batch_size": 8,
            },
            "model": {
                "name": "unet",
                "heads": {"embedding": 2},
                "semiconv": semiconv,
                "coord_scale": COORD_SCALE,
                "params": {"depth": 1, "width": 16},
            },
            # margins in embedding units: clusters must be 2 * 0.35 apart, dot centres are 1 apart
            "loss": {"name": "discriminative", "params": {"delta_v": 0.1, "delta_d": 0.35}},
            "cluster": {"method": "kmeans"},
            "optim": {"lr": 0.005, "schedule": "poly", "warmup_steps": 20, "grad_clip": 5.0},
            "run": {
                "steps": steps,
                "seed": seed,
                "val_every": 0,
                "ckpt_every": 0,
                "log_every": 25,
                "tensorboard": False,
                "progress": True,
            },
        }
    )


@dataclass
class ModelResult:
    name: str
    metrics: dict[str, float]
    train_steps: int
    train_seconds: float
    embeddings: list[np.ndarray] = field(default_factory=list)  # (2, H, W) per test image
    predictions: list[np.ndarray] = field(default_factory=list)  # (H, W) labels per test image


def _instance_scores(emb: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Compactness score of each k-means cluster: 1 / (1 + mean distance to its centre)."""
    scores = np.ones(n, np.float32)
    flat = emb.reshape(emb.shape[0], -1)
    lab = labels.ravel()
    for i in range(1, n + 1):
        pts = flat[:, lab == i]
        if pts.size:
            d = np.sqrt(((pts - pts.mean(1, keepdims=True)) ** 2).sum(0)).mean()
            scores[i - 1] = 1.0 / (1.0 + d)
    return scores


@torch.no_grad()
def evaluate_model(model, samples) -> tuple[dict[str, float], list[np.ndarray], list[np.ndarray]]:
    """ARI (foreground pixels) and COCO AP of k-means-with-true-K clustering on ``samples``."""
    from instembed.cluster.kmeans import kmeans_cluster
    from instembed.engine.evaluation import score
    from instembed.metrics import adjusted_rand_index

    model.eval()
    aris, embs, preds, found = [], [], [], []
    for s in samples:
        x = torch.from_numpy(s.image)[None]
        emb = model(x).embedding[0]  # (E, H, W)
        gt = s.instances
        fg = torch.from_numpy(gt > 0)
        k = int(gt.max())
        labels, _ = kmeans_cluster(emb, fg, k=k, seed=0)
        pred = labels.numpy().astype(np.int32)
        e = emb.numpy()
        aris.append(adjusted_rand_index(gt, pred, mask=gt > 0))
        found.append(Instances(labels=pred, scores=_instance_scores(e, pred, int(pred.max()))))
        embs.append(e)
        preds.append(pred)
    summary = score(samples, found)
    metrics = {
        "ARI": float(np.mean(aris)),
        "AP": float(summary["AP"]),
        "AP50": float(summary["AP50"]),
    }
    return metrics, embs, preds


def run_demo(
    out: str | Path,
    minutes: float = 5.0,
    steps: int = 400,
    n_test: int = 4,
    test_size: tuple[int, int] = (96, 96),
    seed: int = 0,
) -> dict:
    """Train both models, evaluate, write ``out/report.md``, ``out/metrics.json`` and figures.

    ``minutes`` bounds the whole demo: each model gets at most ~40 % of it for training (it
    stops early, with a note in the report, if the machine is too slow for ``steps``).
    Returns the metrics dict written to ``metrics.json``.
    """
    from instembed.data.synth import make_samples
    from instembed.engine.trainer import Trainer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    test = make_samples(
        "dot_grid", n_test, size=test_size, seed=seed + 777, radius=4, spacing=SPACING
    )
    results: dict[str, ModelResult] = {}
    budget = 0.4 * minutes * 60.0
    for name in MODELS:
        cfg = demo_config(semiconv=name == "semiconv", steps=steps, seed=seed)
        t1 = time.perf_counter()
        trainer = Trainer(cfg, out / name)
        fit = trainer.fit(time_limit_s=budget)
        train_s = time.perf_counter() - t1
        log.info("%s: %d steps in %.1f s", name, fit.step, train_s)
        metrics, embs, preds = evaluate_model(trainer.model, test)
        results[name] = ModelResult(name, metrics, fit.step, train_s, embs, preds)
    total = time.perf_counter() - t0
    metrics = {k: r.metrics for k, r in results.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    figures = write_figures(out, test, results)
    write_report(out, results, figures, total, steps, test_size, n_test)
    return metrics


# --------------------------------------------------------------------------- figures
def _colors(n: int) -> np.ndarray:
    from instembed.engine.writers import label_colors

    return label_colors(n).astype(np.float32) / 255


def write_figures(out: Path, test, results: dict[str, ModelResult]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = test[0]
    gt = s.instances
    n = int(gt.max())
    col = _colors(max(n, *(int(r.predictions[0].max()) for r in results.values())))
    figs = {}

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    panels = [("input", None), ("ground truth", gt)] + [
        (f"{k}: k-means, K={n}", r.predictions[0]) for k, r in results.items()
    ]
    for ax, (title, lab) in zip(axes, panels):
        if lab is None:
            ax.imshow(s.image[0], cmap="gray", interpolation="nearest")
        else:
            ax.imshow(col[lab], interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    figs["segmentation"] = "segmentation.png"
    fig.savefig(out / figs["segmentation"], dpi=110)
    plt.close(fig)

    # embedding space, coloured by ground-truth instance (De Brabandere et al. 2017, Fig. 5)
    fig, axes = plt.subplots(1, len(results), figsize=(6.2 * len(results), 5.6))
    rng = np.random.default_rng(0)
    fg = gt > 0
    for ax, (name, r) in zip(np.atleast_1d(axes), results.items()):
        e = r.embeddings[0]
        pts = e[:, fg].T
        ids = gt[fg]
        pick = rng.permutation(len(ids))[: min(len(ids), 6000)]
        ax.scatter(pts[pick, 1], pts[pick, 0], c=col[ids[pick]], s=3, alpha=0.6, linewidths=0)
        means = np.stack([pts[ids == i].mean(0) for i in range(1, n + 1)])
        ax.scatter(means[:, 1], means[:, 0], c=col[1 : n + 1], s=60, marker="X", edgecolors="k")
        ax.set_title(
            f"{name}: 2-D embedding of foreground pixels\n(colour = ground-truth dot; X = dot mean)",
            fontsize=10,
        )
        ax.set_xlabel("embedding dim 1 (x)")
        ax.set_ylabel("embedding dim 0 (y)")
        ax.invert_yaxis()
        ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    figs["embedding"] = "embedding_space.png"
    fig.savefig(out / figs["embedding"], dpi=110)
    plt.close(fig)
    return figs


def write_report(
    out: Path,
    results: dict[str, ModelResult],
    figures: dict[str, str],
    total_s: float,
    steps: int,
    test_size: tuple[int, int],
    n_test: int,
) -> Path:
    rows = "\n".join(
        f"| {k} | {r.metrics['ARI']:.3f} | {r.metrics['AP']:.3f} | {r.metrics['AP50']:.3f}"
        f" | {r.train_steps} | {r.train_seconds:.0f} |"
        for k, r in results.items()
    )
    short = [k for k, r in results.items() if r.train_steps < steps]
    note = (
        f"\n> Training of {', '.join(short)} stopped at the time limit before {steps} steps; "
        "run with a larger `--minutes` on a slow machine.\n"
        if short
        else ""
    )
    text = f"""# instembed demo: the coloring dilemma

Identical dots on a regular grid (Novotny et al., *Semi-convolutional operators for instance
segmentation*, ECCV 2018). The same U-Net (one pooling level, 2-D embedding) and the same
discriminative loss (De Brabandere et al. 2017; delta_v = 0.1, delta_d = 0.35) trained twice:

* **conv**: plain convolutional embedding `Phi_u`. Translation equivariant, so every dot
  (same appearance and surroundings) gets the same embeddings: the instances cannot be separated.
* **semiconv**: `Psi_u = Phi_u + u`, `u` the pixel position in units of the grid period
  ({SPACING} px). The network only has to learn `Phi_u` = offset to the dot's centre.

Evaluation on {n_test} unseen {test_size[0]}x{test_size[1]} dot grids: foreground from the
ground truth, k-means with the true number of dots on the embeddings, adjusted Rand index over
foreground pixels (0 = chance, 1 = perfect) and COCO AP (IoU .50:.95).

| model | ARI | AP | AP50 | training steps | training s |
|---|---|---|---|---|---|
{rows}
{note}
![input, ground truth and both segmentations]({figures["segmentation"]})

Embedding space of one test image, coloured by ground-truth dot (cf. De Brabandere et al. 2017,
Fig. 5): the convolutional embeddings of all dots lie on top of each other, the
semi-convolutional ones form one tight cluster per dot.

![embedding space]({figures["embedding"]})

Total time: {total_s:.0f} s. Both runs (resolved config, checkpoints, training log) are in
`conv/` and `semiconv/`; the same training runs from the command line with
`instembed train configs/dot_grid_semiconv.yaml` (add `model.semiconv=false` for the baseline).
Metrics as JSON: `metrics.json`.
"""
    path = out / "report.md"
    path.write_text(text)
    return path
