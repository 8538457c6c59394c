"""A peer trained beside instembed: StarDist 2D from scratch on the same images, same CPU budget.

StarDist (Schmidt, Weigert, Broaddus & Myers, "Cell Detection with Star-convex Polygons",
MICCAI 2018; the ``stardist`` package, TensorFlow/Keras) is trained here from scratch on the
training images of the recorded split (:mod:`instembed.data.splits`) that the shipped instembed
model of the data set was trained on, for the same wall-clock budget on one CPU thread, and both
are scored on the val split with **instembed's** metrics (:func:`instembed.engine.evaluation.score`):
AP_dsb@0.5, mean AP_dsb over IoU 0.5:0.95, COCO AP, false positives per image at IoU 0.5, and
seconds per image (one thread, whole image, after one warm-up image).

    /work/peer_venv/bin/python benchmarks/peer_stardist.py --dataset bbbc039 --budget-s 2100
    /work/peer_venv/bin/python benchmarks/peer_stardist.py --dataset bbbc039 --budget-s 120 \
        --max-val 4 --out /tmp/peer_smoke.json          # a smoke test of the whole pipeline

The StarDist recipe is its 2D nuclei example (``examples/2D/2_training.ipynb``):
``Config2D(n_rays=32, grid=(2, 2))`` with the package defaults (U-Net depth 3, 32 base filters,
patches 256 x 256, batch 4, Adam lr 3e-4, ReduceLROnPlateau on the val loss, best weights by
val loss), label holes filled, and the example's augmentation (random axis permutation + flips,
intensity ``x * U(0.6, 2) + U(-0.2, 0.2)``, Gaussian noise of sigma ``0.02 * U(0, 1)``); 100
steps per epoch. Its input is the same normalised image instembed's model gets (the shipped
model's reader: 1 / 99.8 percentiles, as the example's ``normalize(x, 1, 99.8)``; DSB2018
images also inverted when their background is bright, colour averaged to gray). Like the
shipped model, whose checkpoint and clustering thresholds were chosen on the val split, StarDist
validates on the val split (one 256 x 256 patch per val image, its default) and tunes its
probability / NMS thresholds there (``optimize_thresholds``, its own procedure). Pixels the
ground truth ignores, and pixels covered by two objects of a mask stack (BBBC010), are negative
in StarDist's label images, which switches its losses off there.

The budget (``--budget-s``, default: the shipped model's recorded training time) is enforced by
a Keras callback that stops training after the batch at which the elapsed time plus the last
validation pass would exceed it (wall-clock; ``--budget-cpu``: this process's CPU seconds, for a
machine whose cores are shared with other jobs); threshold tuning and evaluation come after and are not counted
(as for the shipped model, whose threshold tuning is not counted either). Output:
``benchmarks/results/peer_<dataset>.json`` (both rows, the recipe, epochs and steps done, the
machine's load) and a table on stdout; ``benchmarks/collect_results.py`` renders it in
``RESULTS.md`` ("Peers trained beside instembed").

Peer venv (benchmark-only; never a dependency of the package, never in the main venv)::

    python3.11 -m venv /work/peer_venv
    /work/peer_venv/bin/pip install --dry-run tensorflow-cpu   # check: tensorflow_cpu, no CUDA
    /work/peer_venv/bin/pip install tensorflow-cpu==2.21.0 stardist==0.9.2 csbdeep==0.8.2 \
        torch==2.13.0 numpy scipy scikit-image tifffile pyyaml pillow tqdm pycocotools \
        scikit-learn              # torch: the CPU wheel (here /opt/wheels/torch-2.13.0+cpu-...)
    /work/peer_venv/bin/pip install --no-deps -e /work/main

(torch is in the peer venv only to run the shipped instembed model in the same script; StarDist
does not use it. Keras 3 comes with TensorFlow 2.21, which csbdeep 0.8.2 supports.)
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
REPO = HERE.parent
PRETRAINED = REPO / "src" / "instembed" / "pretrained"
SHIPPED = {"bbbc039": "bbbc039-nuclei", "dsb2018": "dsb2018-nuclei", "bbbc010": "bbbc010-worms"}
LOAD_CAVEAT = (
    "2 CPU cores shared with other agents' jobs and a background benchmark; both models ran on "
    "one thread each, but wall-clock times (training budget, s/image) depend on that load"
)


def set_threads(n: int) -> None:
    """One thread (or ``n``) for every library, before TensorFlow / torch start."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def data_root() -> Path:
    return Path(os.environ.get("INSTEMBED_DATA", REPO.parent / "shared" / "data"))


def load_split(dataset: str, card: dict, root: Path) -> tuple[list, list]:
    """(train samples, val samples): the shipped model's reader on ``root/dataset`` under the
    recorded split of ``dataset`` (the same images and normalisation the model was trained on)."""
    from instembed.data.readers import open_dataset
    from instembed.data.splits import split_dataset

    data = card["config"]["data"]
    reader = open_dataset(root / dataset, format=data["format"], **data["reader_params"])
    train, val = split_dataset(reader, dataset)
    return [train[i] for i in range(len(train))], [val[i] for i in range(len(val))]


# --------------------------------------------------------------------------- StarDist data
def stardist_image(sample) -> np.ndarray:
    """(H, W) float32: the sample's normalised image (one channel; colour averaged)."""
    img = np.asarray(sample.image, np.float32)
    return img.mean(0) if img.shape[0] > 1 else img[0]


def stardist_labels(sample) -> np.ndarray:
    """(H, W) int32 StarDist target: instance ids with holes filled, -1 where no loss applies
    (the ground truth's ignore mask; pixels of two or more objects in a mask stack)."""
    from stardist import fill_label_holes

    lab = fill_label_holes(sample.label_image().astype(np.int32))
    off = sample.overlap_mask()
    if sample.ignore is not None:
        off = off | np.asarray(sample.ignore, bool)
    lab[off] = -1
    return lab


_RNG = np.random.default_rng(0)  # the augmentation's random numbers (reseeded by --seed)


def augmenter(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The StarDist 2D example's augmentation of one (image, labels) patch: a random axis
    permutation and flips, a random gain / offset, additive Gaussian noise."""
    perm = tuple(int(a) for a in _RNG.permutation(2))
    x, y = x.transpose(perm), y.transpose(perm)
    for ax in (0, 1):
        if _RNG.random() > 0.5:
            x, y = np.flip(x, axis=ax), np.flip(y, axis=ax)
    x = x * _RNG.uniform(0.6, 2) + _RNG.uniform(-0.2, 0.2)
    x = x + 0.02 * _RNG.uniform(0, 1) * _RNG.normal(0, 1, x.shape)
    return x.astype(np.float32), y


def budget_callback(
    budget_s: float, cpu: bool = False, log_path: Path | None = None, before: dict | None = None
):
    """A Keras callback that stops training once the elapsed time (since training began) plus
    the duration of the last validation pass reaches ``budget_s`` (wall-clock seconds, or with
    ``cpu`` this process's CPU seconds); it counts steps and epochs and records the val loss and
    the machine's load average after each epoch (also appended to ``log_path``, one JSON line
    per epoch, so that an interrupted run can be resumed: ``--resume``). ``before``: the last
    epoch record of the run being resumed; its epochs, steps and seconds are added to the records
    (the budget given here is what is left of the whole)."""
    before = before or {}
    clock = time.process_time if cpu else time.perf_counter
    import keras

    class BudgetStop(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.budget_s = float(budget_s)
            self.steps = self.epochs = 0
            self.val_s = 0.0
            self.history: list[dict] = []
            self.stopped_by_budget = False

        def on_train_begin(self, logs=None) -> None:
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def cpu_s(self) -> float:
            """CPU seconds this process used since training began (all its threads)."""
            return round(time.process_time() - self.c0, 1)

        def on_train_batch_end(self, batch, logs=None) -> None:
            self.steps += 1
            spent = (self.c0 if cpu else self.t0) - self.val_s
            if clock() - spent >= self.budget_s:
                self.stopped_by_budget = True
                self.model.stop_training = True

        def on_test_begin(self, logs=None) -> None:
            self._tv = clock()

        def on_test_end(self, logs=None) -> None:
            self.val_s = clock() - self._tv

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.epochs += 1
            logs = logs or {}
            self.history.append(
                {
                    "epoch": before.get("epoch", 0) + epoch + 1,
                    "steps": before.get("steps", 0) + self.steps,
                    "seconds": round(before.get("seconds", 0) + time.perf_counter() - self.t0, 1),
                    "cpu_seconds": round(before.get("cpu_seconds", 0) + self.cpu_s(), 1),
                    "loss": float(logs.get("loss", float("nan"))),
                    "val_loss": float(logs.get("val_loss", float("nan"))),
                    "loadavg_1min": round(os.getloadavg()[0], 2),
                }
            )
            print(f"[budget] {self.history[-1]}", flush=True)
            if log_path is not None:
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(self.history[-1]) + "\n")

    return BudgetStop()


def train_stardist(
    train,
    val,
    budget_s: float,
    workdir: Path,
    seed: int,
    tune_on: int | None = None,
    eval_only: bool = False,
    budget_cpu: bool = False,
    resume: bool = False,
):
    """A StarDist2D model trained from scratch on ``train`` (validated on ``val``) for at most
    ``budget_s`` seconds, its best weights (val loss) loaded and thresholds tuned on ``val``
    (its first ``tune_on`` images: smoke tests); returns (model, facts about the run).
    ``eval_only``: load the best weights and the facts of a finished run in ``workdir``.
    ``resume``: continue a run that was interrupted (its process killed) from the weights of its
    last finished epoch (``weights_now.h5``) with what is left of ``budget_s`` after the epochs
    recorded in ``workdir/epochs.jsonl``; the best-weights checkpoint keeps the best val loss
    of those epochs, the augmentation and patch sampling are reseeded with ``seed`` + epochs
    done (so they do not repeat), and the optimizer and learning-rate schedule start afresh
    (Adam's moments are not in the weights file)."""
    import tensorflow as tf
    from stardist.models import Config2D, StarDist2D

    epochs_file = workdir / "epochs.jsonl"
    prior: list[dict] = []
    if resume:
        if not epochs_file.is_file() or not (workdir / "stardist" / "weights_now.h5").is_file():
            raise SystemExit(
                f"--resume: expected {epochs_file} and {workdir / 'stardist' / 'weights_now.h5'} "
                "(an interrupted run's epoch log and last weights); not found"
            )
        prior = [json.loads(line) for line in epochs_file.read_text().splitlines() if line]
        seed = seed + len(prior)
    global _RNG
    _RNG = np.random.default_rng(seed)
    tf.random.set_seed(seed)  # StarDist's own patch sampling: ``train(seed=...)`` below
    X = [stardist_image(s) for s in train]
    Y = [stardist_labels(s) for s in train]
    Xv = [stardist_image(s) for s in val]
    Yv = [stardist_labels(s) for s in val]
    conf = Config2D(
        n_rays=32,
        grid=(2, 2),
        n_channel_in=1,
        use_gpu=False,
        train_patch_size=(256, 256),
        train_batch_size=4,
        train_epochs=400,
        train_steps_per_epoch=100,
        train_tensorboard=False,  # logging only (TensorBoard is not in the peer venv)
    )
    workdir.mkdir(parents=True, exist_ok=True)
    done = workdir / "train_facts.json"
    if eval_only:  # training already done in workdir: its best weights, its recorded facts
        model = StarDist2D(None, name="stardist", basedir=str(workdir))
        facts = json.loads(done.read_text())
    else:
        if prior:  # the interrupted run's config and the weights of its last finished epoch
            model = StarDist2D(None, name="stardist", basedir=str(workdir))
            model.load_weights("weights_now.h5")
        else:
            epochs_file.unlink(missing_ok=True)
            model = StarDist2D(conf, name="stardist", basedir=str(workdir))
        model.prepare_for_training()
        if prior:  # weights_best.h5 is only replaced by an epoch better than the earlier ones
            import keras

            for cb in model.callbacks:
                if isinstance(cb, keras.callbacks.ModelCheckpoint) and cb.save_best_only:
                    cb.best = min(h["val_loss"] for h in prior)
        last = prior[-1] if prior else {}
        spent = last.get("cpu_seconds" if budget_cpu else "seconds", 0.0)
        stop = budget_callback(budget_s - spent, cpu=budget_cpu, log_path=epochs_file, before=last)
        model.callbacks.append(stop)
        t0 = time.perf_counter()
        model.train(X, Y, validation_data=(Xv, Yv), augmenter=augmenter, seed=seed)
        train_s = time.perf_counter() - t0
        history = prior + stop.history
        best = min(history, key=lambda h: h["val_loss"]) if history else None
        facts = {
            "config": {
                k: (list(v) if isinstance(v, tuple) else v)
                for k, v in vars(model.config).items()
                if isinstance(v, int | float | str | bool | tuple | list | type(None))
            },
            "train_seconds": round(last.get("seconds", 0.0) + train_s, 1),
            "train_cpu_seconds": round(last.get("cpu_seconds", 0.0) + stop.cpu_s(), 1),
            "steps": last.get("steps", 0) + stop.steps,
            "epochs": last.get("epoch", 0) + stop.epochs,
            "steps_per_epoch": conf.train_steps_per_epoch,
            "stopped_by_budget": stop.stopped_by_budget,
            "budget_clock": "process CPU seconds" if budget_cpu else "wall-clock seconds",
            "best_epoch_by_val_loss": best["epoch"] if best else None,
            "resumed_after_epoch": last.get("epoch"),
            "epochs_log": history,
        }
        done.write_text(json.dumps(facts, indent=1))
    t1 = time.perf_counter()
    n_tune = len(Xv) if tune_on is None else tune_on
    # its matching takes non-negative label images only: the ignored / overlap pixels count as
    # background there (they are negative in the training targets only)
    model.optimize_thresholds(Xv[:n_tune], [np.maximum(y, 0) for y in Yv[:n_tune]])
    tune_s = time.perf_counter() - t1
    facts = {
        **facts,
        "thresholds": {k: float(v) for k, v in dict(model.thresholds._asdict()).items()},
        "threshold_tuning_seconds": round(tune_s, 1),
        "threshold_tuning_images": n_tune,
        "workdir": str(workdir),
    }
    return model, facts


# --------------------------------------------------------------------------- predictions
def stardist_instances(labels: np.ndarray, prob: np.ndarray):
    """An instembed :class:`~instembed.structures.Instances` from StarDist's label image (label
    ``k + 1`` is polygon ``k``) and its polygon probabilities (the scores COCO AP ranks by);
    polygons painted over entirely are dropped, the rest renumbered 1..N."""
    from instembed.structures import Instances

    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    scores = np.asarray(prob, np.float32)[ids - 1] if len(ids) else np.zeros(0, np.float32)
    return Instances(labels=lut[labels], scores=scores)


def timed(fn, items) -> tuple[list, float]:
    """(fn(item) for each item, mean seconds per item), with one untimed warm-up call."""
    if items:
        fn(items[0])
    out, total = [], 0.0
    for it in items:
        t0 = time.perf_counter()
        out.append(fn(it))
        total += time.perf_counter() - t0
    return out, total / max(len(items), 1)


def predict_stardist(model, samples) -> tuple[list, float]:
    def one(s):
        labels, details = model.predict_instances(stardist_image(s), verbose=False)
        return stardist_instances(labels, details["prob"])

    return timed(one, samples)


def predict_instembed(name: str, samples) -> tuple[list, float]:
    from instembed.engine.predict import Predictor

    predictor = Predictor.from_spec(name)
    return timed(lambda s: predictor(s.image), samples)


def metrics_row(samples, predictions, sec_per_image: float) -> dict:
    """instembed's metrics of ``predictions`` on ``samples`` (:func:`score`): the headline
    numbers (:func:`headline`: APs, counts at IoU 0.5, false positives per image) and the
    seconds per image."""
    from instembed.engine.evaluation import headline, score

    row = headline(score(samples, predictions), len(samples))
    row.pop("FN_per_image@0.5")  # the table shows false positives per image only
    return {**row, "s_per_image": sec_per_image}


def machine(threads: int) -> str:
    import tensorflow as tf
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"tensorflow {tf.__version__}, torch {torch.__version__}, {threads} thread(s)"
    )


def print_table(result: dict) -> None:
    cols = ("AP_dsb@0.5", "AP_dsb@0.5:0.95", "AP", "FP_per_image@0.5", "s_per_image")
    head = f"{'method':<28}" + "".join(f"{c:>18}" for c in cols) + f"{'training':>14}"
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        cells = "".join(f"{r[c]:>18.3f}" for c in cols)
        print(f"{r['method']:<28}{cells}{r['train_seconds'] / 60:>10.1f} min")


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
    ap.add_argument(
        "--max-val",
        type=int,
        default=None,
        help="score (and tune StarDist's thresholds on) only the first N val images: smoke tests",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--workdir", default=None, help="StarDist model folder (default /tmp/...)")
    ap.add_argument(
        "--eval-only",
        action="store_true",
        help="skip training: tune, predict and score the finished run in --workdir",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --workdir (weights of its last epoch, the rest of "
        "the budget), then tune, predict and score as usual",
    )
    ap.add_argument("--out", default=None, help="JSON (default results/peer_<dataset>.json)")
    args = ap.parse_args(argv)
    set_threads(args.threads)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)

    name = SHIPPED[args.dataset]
    card = json.loads((PRETRAINED / f"{name}.json").read_text())
    budget = float(args.budget_s if args.budget_s is not None else card["train_seconds"])
    root = Path(args.data_root) if args.data_root else data_root()
    train, val = load_split(args.dataset, card, root)
    scored = val[: args.max_val] if args.max_val else val
    load_start = os.getloadavg()
    print(
        f"{args.dataset}: {len(train)} train / {len(val)} val ({len(scored)} scored); budget "
        f"{budget:.0f} s on {args.threads} thread(s)",
        flush=True,
    )

    workdir = Path(args.workdir or f"/tmp/peer_stardist/{args.dataset}")
    model, facts = train_stardist(
        train,
        val,
        budget,
        workdir,
        args.seed,
        args.max_val,
        eval_only=args.eval_only,
        budget_cpu=args.budget_cpu,
        resume=args.resume,
    )
    sd_pred, sd_s = predict_stardist(model, scored)
    ie_pred, ie_s = predict_instembed(name, scored)

    sd_row = {
        "method": "StarDist 2D (n_rays 32, grid 2)",
        **metrics_row(scored, sd_pred, sd_s),
        "train_seconds": facts["train_seconds"],
        "steps": facts["steps"],
        "batch": 4,
        "patch": [256, 256],
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
        "script": "benchmarks/peer_stardist.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "smoke_test": bool(args.max_val) or budget < 0.5 * card["train_seconds"],
        "split": {
            "module": "instembed.data.splits",
            "n_train": len(train),
            "n_val": len(val),
            "n_scored": len(scored),
        },
        "budget_s": budget,
        "shipped_model": {"name": name, "sha256": card["sha256"]},
        "stardist": facts,
        "rows": [ie_row, sd_row],
        "metrics_from": "instembed.engine.evaluation.score",
        "machine": machine(args.threads),
        "load_caveat": LOAD_CAVEAT,
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "reference": "Schmidt et al., Cell Detection with Star-convex Polygons, MICCAI 2018",
    }
    out = Path(args.out) if args.out else HERE / "results" / f"peer_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)
    print(
        f"StarDist: {facts['steps']} steps in {facts['epochs']} epoch(s) "
        f"({facts['train_seconds']:.0f} s; stopped by budget: {facts['stopped_by_budget']}); "
        f"thresholds {facts['thresholds']}; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
