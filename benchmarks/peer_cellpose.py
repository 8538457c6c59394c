"""A peer trained beside instembed: Cellpose 3 from scratch on the same images, same CPU budget.

Cellpose (Stringer, Wang, Michaelos & Pachitariu, "Cellpose: a generalist algorithm for cellular
segmentation", Nature Methods 18, 2021; the ``cellpose`` package 3.1, PyTorch) is trained here
from a random initialisation (no built-in weights) on the training images of the recorded split
(:mod:`instembed.data.splits`) that the shipped instembed model of the data set was trained on,
for the same wall-clock budget on one CPU thread, and both are scored on the val split with
**instembed's** metrics (:func:`instembed.engine.evaluation.score`, via ``peer_stardist``'s
helpers): AP_dsb@0.5, mean AP_dsb over IoU 0.5:0.95, COCO AP, false positives per image at IoU
0.5, seconds per image (one thread, whole image, after one warm-up image).

    /work/peer_cellpose_venv/bin/python benchmarks/peer_cellpose.py --dataset bbbc039 --budget-s 2100
    /work/peer_cellpose_venv/bin/python benchmarks/peer_cellpose.py --dataset bbbc039 \
        --budget-s 120 --max-val 4 --out /tmp/peer_cellpose_smoke.json      # smoke test

Recipe: ``cellpose.train.train_seg`` with its defaults (CPnet ``nbase [2, 32, 64, 128, 256]``,
2 input channels = the gray image + zeros, AdamW lr 0.005 with a 10-epoch warm-up, weight decay
1e-5, batch 8, 224 x 224 crops, rotation / rescaling to a mean diameter of 30 px, flows computed
from the labels before training) and ``n_epochs=2000``, so that within the budget the learning
rate stays at its plateau (the schedule's final decay is never reached, as StarDist's
ReduceLROnPlateau is not). Its input is the same normalised image instembed's model gets
(Cellpose normalises it again, 1 / 99 percentiles). The budget clock starts when ``train_seg`` is
called (the flow computation counts) and is checked before every optimiser step (a wrapper of
``cellpose.train._loss_fn_seg`` raises when it is spent; the weights are those after the last
completed step). Prediction: ``CellposeModel.eval`` at the mean training diameter
(``diam_labels``), its default flow threshold 0.4 and cell-probability threshold 0 (Cellpose has
no threshold tuner; the other two models had theirs tuned on the val split); an instance's
score is its mean cell probability. Output: ``benchmarks/results/peer_cellpose_<dataset>.json``
(rendered by ``benchmarks/collect_results.py``).

Peer venv: Cellpose 3.1.1.2 installs beside torch 2.13.0 without replacing it, but pins numpy
below 2.1 (2.0.2), which the StarDist venv's TensorFlow does not need; so it has its own venv
(benchmark-only; never a dependency of the package, never in the main venv)::

    python3.11 -m venv /work/peer_cellpose_venv
    /work/peer_cellpose_venv/bin/pip install --dry-run cellpose==3.1.1.2  # check: no torch change
    /work/peer_cellpose_venv/bin/pip install torch==2.13.0 cellpose==3.1.1.2 scikit-image \
        tifffile pyyaml pillow tqdm pycocotools scikit-learn scipy   # torch: the CPU wheel
    /work/peer_cellpose_venv/bin/pip install --no-deps -e /work/main

(cellpose 4 requires torch 2.14 and CUDA wheels: not used.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peer_stardist import (  # noqa: E402  (the shared helpers of the peer benchmarks)
    LOAD_CAVEAT,
    PRETRAINED,
    SHIPPED,
    data_root,
    load_split,
    metrics_row,
    predict_instembed,
    print_table,
    set_threads,
    stardist_image,
    timed,
)


class BudgetReached(Exception):
    """Raised inside Cellpose's training loop once the wall-clock budget is spent."""


def cellpose_labels(sample) -> np.ndarray:
    """(H, W) int32 label image for Cellpose (mask stacks: the later mask wins an overlap;
    Cellpose has no ignore label, so ignored pixels stay as annotated)."""
    return sample.label_image().astype(np.int32)


def train_cellpose(train, budget_s: float, workdir: Path, seed: int, budget_cpu: bool = False):
    """A Cellpose model trained from scratch on ``train`` for at most ``budget_s`` seconds
    (wall-clock, or with ``budget_cpu`` this process's CPU seconds); returns (CellposeModel
    loaded from the saved weights, facts about the run)."""
    import torch
    from cellpose import models
    from cellpose import train as cp_train

    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (Cellpose's loop reseeds the legacy global RNG itself)
    X = [stardist_image(s) for s in train]
    Y = [cellpose_labels(s) for s in train]
    model = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None)
    net = model.net
    state = {"steps": 0, "stopped_by_budget": False}
    loss_fn = cp_train._loss_fn_seg
    t0 = time.perf_counter()
    c0 = time.process_time()

    def budgeted_loss(lbl, y, device):
        if net.training:
            spent = time.process_time() - c0 if budget_cpu else time.perf_counter() - t0
            if spent >= budget_s:
                state["stopped_by_budget"] = True
                raise BudgetReached
            state["steps"] += 1
        return loss_fn(lbl, y, device)

    workdir.mkdir(parents=True, exist_ok=True)
    cp_train._loss_fn_seg = budgeted_loss
    try:
        cp_train.train_seg(
            net,
            train_data=X,
            train_labels=Y,
            channels=[0, 0],
            normalize=True,
            n_epochs=2000,
            save_path=str(workdir),
            save_every=10**9,
            model_name="cellpose_peer",
        )
    except BudgetReached:
        pass
    finally:
        cp_train._loss_fn_seg = loss_fn
    train_s = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    path = workdir / "models" / "cellpose_peer"
    path.parent.mkdir(parents=True, exist_ok=True)
    net.save_model(str(path))
    trained = models.CellposeModel(gpu=False, pretrained_model=str(path))
    n_per_epoch = -(-len(X) // 8)
    facts = {
        "recipe": "cellpose.train.train_seg defaults (AdamW lr 0.005, wd 1e-5, batch 8, bsize "
        "224, rescale to diam_mean 30), n_epochs=2000, channels [0, 0], from scratch",
        "train_seconds": round(train_s, 1),
        "train_cpu_seconds": round(cpu_s, 1),
        "steps": state["steps"],
        "epochs": round(state["steps"] / n_per_epoch, 2),
        "stopped_by_budget": state["stopped_by_budget"],
        "budget_clock": "process CPU seconds" if budget_cpu else "wall-clock seconds",
        "diam_labels": float(trained.diam_labels),
        "thresholds": {"flow_threshold": 0.4, "cellprob_threshold": 0.0},
        "weights": str(path),
        "budget_s": budget_s,
    }
    (workdir / "train_facts.json").write_text(json.dumps(facts, indent=1))
    return trained, facts


def cellpose_instances(masks: np.ndarray, cellprob: np.ndarray):
    """An instembed :class:`~instembed.structures.Instances` from Cellpose's label image; the
    score of each instance is its mean cell probability (sigmoid of Cellpose's logit)."""
    from scipy import ndimage

    from instembed.structures import Instances

    ids = np.unique(masks)
    ids = ids[ids > 0]
    lut = np.zeros(int(masks.max()) + 1 if masks.size else 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    prob = 1.0 / (1.0 + np.exp(-np.asarray(cellprob, np.float32)))
    scores = (
        np.asarray(ndimage.mean(prob, masks, ids), np.float32)
        if len(ids)
        else np.zeros(0, np.float32)
    )
    return Instances(labels=lut[masks], scores=scores)


def predict_cellpose(model, samples) -> tuple[list, float]:
    def one(s):
        masks, flows, _ = model.eval(stardist_image(s), channels=[0, 0], diameter=None)
        return cellpose_instances(np.asarray(masks), flows[2])

    return timed(one, samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dataset", default="bbbc039", choices=sorted(SHIPPED))
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="training wall-clock budget (default: the shipped model's recorded training time)",
    )
    ap.add_argument(
        "--budget-cpu",
        action="store_true",
        help="count the budget in this process's CPU seconds, not wall-clock (shared machines)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-val", type=int, default=None, help="score the first N val images only")
    ap.add_argument(
        "--max-train", type=int, default=None, help="train on the first N images only: smoke tests"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--workdir", default=None, help="Cellpose model folder (default /tmp/...)")
    ap.add_argument("--out", default=None, help="JSON (default results/peer_cellpose_<ds>.json)")
    ap.add_argument(
        "--eval-only",
        action="store_true",
        help="skip training: score the run finished in --workdir again (its train_facts.json; "
        "e.g. beside a re-shipped instembed model, with its current reader options)",
    )
    args = ap.parse_args(argv)
    set_threads(args.threads)
    import cellpose
    import torch

    torch.set_num_threads(args.threads)

    name = SHIPPED[args.dataset]
    card = json.loads((PRETRAINED / f"{name}.json").read_text())
    budget = float(args.budget_s if args.budget_s is not None else card["train_seconds"])
    root = Path(args.data_root) if args.data_root else data_root()
    train, val = load_split(args.dataset, card, root)
    scored = val[: args.max_val] if args.max_val else val
    train = train[: args.max_train] if args.max_train else train
    load_start = os.getloadavg()
    print(
        f"{args.dataset}: {len(train)} train / {len(val)} val ({len(scored)} scored); budget "
        f"{budget:.0f} s on {args.threads} thread(s)",
        flush=True,
    )
    workdir = Path(args.workdir or f"/tmp/peer_cellpose/{args.dataset}")
    out = Path(args.out) if args.out else HERE / "results" / f"peer_cellpose_{args.dataset}.json"
    if args.eval_only:  # the recorded run's weights and facts; its training is not repeated
        from cellpose import models

        facts = json.loads((workdir / "train_facts.json").read_text())
        budget = float(facts.get("budget_s", budget))
        model = models.CellposeModel(gpu=False, pretrained_model=facts["weights"])
    else:
        model, facts = train_cellpose(train, budget, workdir, args.seed, args.budget_cpu)
    print(f"trained: {facts}", flush=True)
    cp_pred, cp_s = predict_cellpose(model, scored)
    ie_pred, ie_s = predict_instembed(name, scored)
    cp_row = {
        "method": "Cellpose 3 (from scratch)",
        **metrics_row(scored, cp_pred, cp_s),
        "train_seconds": facts["train_seconds"],
        "steps": facts["steps"],
        "batch": 8,
        "patch": [224, 224],
    }
    ie_row = {
        "method": f"instembed `{name}`",
        **metrics_row(scored, ie_pred, ie_s),
        "train_seconds": card["train_seconds"],
        "steps": card["steps"] + (card["init"]["steps"] if card.get("init") else 0),
        "batch": card["config"]["data"]["batch_size"],
        "patch": card["config"]["data"]["augment"][0].get("size"),
    }
    result = {
        "dataset": args.dataset,
        "script": "benchmarks/peer_cellpose.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "smoke_test": bool(args.max_val or args.max_train) or budget < 0.5 * card["train_seconds"],
        "split": {
            "module": "instembed.data.splits",
            "n_train": len(train),
            "n_val": len(val),
            "n_scored": len(scored),
        },
        "budget_s": budget,
        "shipped_model": {"name": name, "sha256": card["sha256"]},
        "cellpose": facts,
        "rows": [ie_row, cp_row],
        "metrics_from": "instembed.engine.evaluation.score",
        "machine": (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"cellpose {cellpose.version}, torch {torch.__version__}, {args.threads} thread(s)"
        ),
        "load_caveat": LOAD_CAVEAT,
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "reference": "Stringer et al., Cellpose: a generalist algorithm for cellular "
        "segmentation, Nature Methods 2021",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)
    print(
        f"Cellpose: {facts['steps']} steps (~{facts['epochs']} epochs; {facts['train_seconds']:.0f}"
        f" s; stopped by budget: {facts['stopped_by_budget']}); wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
