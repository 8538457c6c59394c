"""Train, validate and ship one of instembed's pretrained models on a recorded train/val split.

    python benchmarks/train_pretrained.py configs/pretrained/bbbc039-nuclei.yaml \
        --name bbbc039-nuclei --dataset bbbc039 --out runs/bbbc039-nuclei [--ship]

What it does, in order:

1. reads the run config (``instembed.engine.config.load_config``; ``-o key=value`` overrides);
2. builds the engine's :class:`~instembed.engine.trainer.Trainer`, then gives it the recorded
   split of :mod:`instembed.data.splits` (``data.path`` read with ``open_dataset``, training
   samples preloaded in memory, validation = the recorded val ids) instead of the config's
   ``val_fraction`` split;
3. trains (``Trainer.fit``; the best checkpoint by ``run.best_metric`` on the val split);
4. for the best checkpoint of the in-training validation and the last checkpoint, tunes the
   clusterer's thresholds on the val split (a small grid) and keeps the checkpoint + thresholds
   with the highest AP_dsb@0.5 (the only data looked at are the val images);
   ``--keep-within EPS`` (> 0) keeps the thresholds of the shipped card ``<name>.json`` unless
   the best setting beats them by more than EPS (AP_dsb@0.5 on the val split);
   ``--finish`` runs this step (and 5) on a run folder whose training is already done;
5. with ``--ship``: writes ``src/instembed/pretrained/<name>.pt`` (weights + the
   resolved config, an instembed checkpoint readable with ``torch.load(weights_only=True)``),
   ``<name>.json`` (sha256 of the .pt, config, split, metrics, training time, machine) and
   prints one JSON line with the validation metrics. The config records the training object
   sizes (``data.object_diameter``, :mod:`instembed.data.sizes`) and the card the val metrics
   with ``--scale auto`` (``val_auto_scale``).

``--record-sizes NAME...`` re-ships shipped models with those two added (same weights);
``--fit-size-model NAME...`` does the same and fits and ships a size model
(:mod:`instembed.engine.size_model`) in each checkpoint.

Training on CPU here: see docs/pretrained.md for the recipes and the measured times.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from instembed.data.dataset import InstanceDataset
from instembed.data.looks import sample_look
from instembed.data.readers import open_dataset
from instembed.data.sizes import training_sizes
from instembed.data.splits import SEED, VAL_FRACTION, split_dataset
from instembed.engine import checkpoint as ck
from instembed.engine.build import train_transform
from instembed.engine.config import config_from_yaml, config_to_dict, config_to_yaml, load_config
from instembed.engine.evaluation import evaluate_outputs
from instembed.engine.trainer import Trainer
from instembed.engine.tune import METRICS, default_grid, tune_thresholds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_cards import history_with, write_card  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "src" / "instembed" / "pretrained"
log = logging.getLogger("train_pretrained")


def data_root() -> Path:
    return Path(os.environ.get("INSTEMBED_DATA", REPO.parent / "shared" / "data"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


@torch.no_grad()
def network_outputs(model, samples, forward=None) -> list:
    """Outputs (batch 1, CPU float32) of ``model`` on each sample's whole image; ``forward(x)``
    runs instead of ``model(x)`` when given (e.g. test-time augmentation)."""
    model.eval()
    forward = model if forward is None else forward
    outs = []
    for s in samples:
        x = torch.from_numpy(np.ascontiguousarray(s.image, np.float32))[None]
        outs.append(forward(x).map(lambda t: t.float()))
    return outs


# the names of the looks (instembed.data.looks) in the model cards' per-look tables
LOOK_NAMES = {
    "fluorescence": "fluorescence",
    "he": "colour (H&E-like)",
    "brightfield": "bright-field",
}


def metrics_by_group(outputs, samples, cluster, group_of) -> dict[str, dict]:
    """:func:`evaluate_outputs` per group of samples (``group_of(sample) -> name``), with the
    number of images of each group as ``n_images``."""
    groups: dict[str, list[int]] = {}
    for i, smp in enumerate(samples):
        groups.setdefault(group_of(smp), []).append(i)
    out = {}
    for name, idx in sorted(groups.items()):
        m = evaluate_outputs([outputs[i] for i in idx], [samples[i] for i in idx], cluster)
        out[name] = {"n_images": len(idx), **{k: m.get(k) for k in METRICS}}
    return out


def auto_scale_metrics(model, cfg, samples) -> dict:
    """The val metrics of ``predict --scale auto`` (:mod:`instembed.data.sizes`; the default of
    predict and ``instembed.segment``) and the images it resized (name -> factor)."""
    from instembed.engine.evaluation import headline, score
    from instembed.engine.predict import Predictor

    predictor = Predictor(model, cfg, scale="auto")
    preds = [predictor(s.image) for s in samples]
    h = headline(score(samples, preds), len(samples))
    keys = ("AP_dsb@0.5", "AP_dsb@0.5:0.95", "AP", "FP_per_image@0.5", "FN_per_image@0.5")
    return {
        **{k: h[k] for k in keys},
        "resized": {
            Path(str(s.path)).name: round(p.meta["scale"], 3)
            for s, p in zip(samples, preds)
            if p.meta["scale"] != 1.0
        },
    }


def val_benchmark_parser(doc: str | None, models, results: Path) -> argparse.ArgumentParser:
    """The options shared by the benchmarks that run the shipped models on their val splits
    (``tta.py``, ``auto_scale.py``): ``--models``, ``--max-val``, ``--out``, ``--data-root``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(models), choices=list(models))
    ap.add_argument("--max-val", type=int, default=None, help="only the first N val images")
    ap.add_argument("--out", default=str(results), help="JSON-lines result file")
    ap.add_argument("--data-root", default=None, help="folder holding the data sets")
    return ap


def compare_with_shipped(name: str, dataset: str, cfg, outputs, samples) -> dict | None:
    """Paired bootstrap (:func:`instembed.metrics.bootstrap.paired_bootstrap`) of a candidate's
    per-image val AP_dsb@0.5 -- its network ``outputs`` on ``samples`` (read as ``cfg.data``
    says) clustered by ``cfg.cluster`` -- against the shipped model ``name`` (its card's
    clustering, scale 1, the val images read as its own config says); None when no model of
    that name is shipped."""
    import dataclasses

    from instembed.engine.build import cluster_outputs
    from instembed.engine.evaluation import per_image
    from instembed.engine.predict import Predictor
    from instembed.metrics.bootstrap import paired_bootstrap

    card = PRETRAINED / f"{name}.json"
    if not card.is_file():
        return None
    shipped = Predictor.from_spec(name)
    ref_samples = samples
    if shipped.cfg.data.reader_params != cfg.data.reader_params:  # e.g. gray vs colour input
        data = dataclasses.replace(shipped.cfg.data, path=cfg.data.path)
        ref_samples = load_split(dataclasses.replace(shipped.cfg, data=data), dataset)[1]
    ref_outputs = network_outputs(shipped.model, ref_samples)
    a = per_image(samples, [cluster_outputs(o, cfg.cluster) for o in outputs])
    b = per_image(ref_samples, [cluster_outputs(o, shipped.cluster) for o in ref_outputs])
    return {
        "shipped_sha256": json.loads(card.read_text())["sha256"],
        **paired_bootstrap(a, b).as_dict(),
    }


def load_split(cfg, dataset: str) -> tuple[list, list]:
    """(train samples, val samples) of ``cfg.data.path`` under the recorded split of
    ``dataset``, decoded into memory once (the reader options of ``cfg.data`` apply)."""
    reader = open_dataset(cfg.data.path, format=cfg.data.format, **cfg.data.reader_params)
    train_view, val_view = split_dataset(reader, dataset)
    t0 = time.perf_counter()
    train_samples = [train_view[i] for i in range(len(train_view))]
    val_samples = [val_view[i] for i in range(len(val_view))]
    log.info(
        "%s: %d train / %d val samples loaded in %.1f s",
        dataset,
        len(train_samples),
        len(val_samples),
        time.perf_counter() - t0,
    )
    return train_samples, val_samples


def train_on_split(
    cfg,
    out,
    train_samples,
    val_samples,
    time_limit: float | None = None,
    resume: bool = False,
    init: Path | None = None,
    cpu_time: bool = False,
):
    """Train with the engine's Trainer on the given samples (augmented as ``cfg.data`` says,
    validated on ``val_samples``); returns (trainer, FitResult, training seconds).
    ``resume``: continue from ``out/last.pt`` (e.g. with a larger ``run.steps``);
    ``init``: start from the weights of this checkpoint (fresh optimizer and schedule);
    ``cpu_time``: ``time_limit`` counts CPU seconds of this process (fair on a shared machine).
    The result carries ``cpu_s``, the CPU seconds the training took."""
    train_set = InstanceDataset(
        train_samples,
        transform=train_transform(cfg.data),
        targets=tuple(cfg.data.targets),
        center=cfg.data.center,
    )
    # the split's samples go in directly: the config's own data folder is never read
    trainer = Trainer(cfg, out, resume=resume, train_set=train_set, val_samples=val_samples)
    if init is not None and not resume:
        state = ck.load_checkpoint(init, map_location="cpu")
        weights = state["model"]
        old_cfg = config_from_yaml(state["config"]) if "config" in state else None
        if old_cfg is not None and old_cfg.model.in_channels == 1 < cfg.model.in_channels:
            weights = ck.gray_to_colour(trainer.model, weights, source=str(init))
            log.info("gray weights widened to %d input channels", cfg.model.in_channels)
        old_width = (old_cfg.model.params or {}).get("width") if old_cfg is not None else None
        new_width = (cfg.model.params or {}).get("width")
        if old_width is not None and new_width is not None and old_width < new_width:
            weights = ck.widen(trainer.model, weights, source=str(init))
            log.info("weights of width %d widened to %d (same function)", old_width, new_width)
        ck.load_model_state(trainer.model, weights, source=str(init))
        log.info("initialised the weights from %s (its step %s)", init, state.get("step"))
    t0 = time.perf_counter()
    c0 = time.process_time()
    result = trainer.fit(time_limit_s=time_limit, cpu_time=cpu_time)
    train_s = time.perf_counter() - t0
    result.cpu_s = time.process_time() - c0
    trainer.close()
    log.info("trained %d steps in %.0f s (%s)", result.step, train_s, result.status)
    return trainer, result, train_s


def init_path(spec: str | None) -> Path | None:
    """A checkpoint path from ``--init``: a file, or the name of a shipped model."""
    if spec is None:
        return None
    if Path(spec).is_file():
        return Path(spec)
    shipped = PRETRAINED / f"{spec}.pt"
    if shipped.is_file():
        return shipped
    raise SystemExit(f"--init {spec!r}: neither a checkpoint file nor a shipped model name")


def finished_run(out: Path) -> tuple[int, float]:
    """(steps, training seconds) of a finished run folder (``train_time.json``, else the
    step of ``last.pt`` and the span of ``train_log.csv``'s modification times)."""
    info = out / "train_time.json"
    if info.is_file():
        d = json.loads(info.read_text())
        return int(d["steps"]), float(d["seconds"])
    state = ck.load_checkpoint(out / "last.pt")
    seconds = (out / "train_log.csv").stat().st_mtime - (out / "config.yaml").stat().st_mtime
    return int(state["step"]), float(seconds)


def record_sizes(name: str, root: Path | None = None, size_model: bool = False) -> dict:
    """Re-ship the shipped model ``name`` with its training object sizes in its config
    (``data.object_diameter``, measured on its training split; the weights, step and clustering
    unchanged) and its val metrics with ``--scale auto`` in its card, as a new version.
    ``size_model``: also fit a size model on its training split
    (:func:`instembed.engine.size_model.fit_size_model`) and ship it in the checkpoint."""
    card_path, weights = PRETRAINED / f"{name}.json", PRETRAINED / f"{name}.pt"
    card = json.loads(card_path.read_text())
    state = ck.load_checkpoint(weights)
    cfg = config_from_yaml(state["config"])
    stored_path = cfg.data.path
    cfg.data.path = str((root or data_root()) / card["dataset"])
    train_samples, val_samples = load_split(cfg, card["dataset"])
    cfg.data.object_diameter = training_sizes(train_samples)
    cfg.data.path = stored_path
    from instembed.engine.build import build_model_from_config

    model = build_model_from_config(cfg.model)
    ck.load_model_state(model, state["model"], source=str(weights))
    model.eval()
    from instembed.engine.size_model import SizeModel, fit_size_model

    sm = state.get("size_model")
    fitted = fit_size_model(model, train_samples) if size_model else None
    if size_model:
        sm = fitted.to_dict() if fitted is not None else None
    if sm is not None:
        model.size_model = fitted or SizeModel.from_dict(sm)
    auto = auto_scale_metrics(model, cfg, val_samples)
    ck.save_checkpoint(
        weights,
        model_state=state["model"],
        config_yaml=config_to_yaml(cfg),
        step=int(state["step"]),
        metrics=state.get("metrics"),
        size_model=sm,
    )
    card.update(sha256=sha256_file(weights), config=config_to_dict(cfg), val_auto_scale=auto)
    card["size_model"] = sm is not None
    sizes = " / ".join(f"{v:g}" for v in cfg.data.object_diameter)
    change = (
        f"same weights; training object diameters ({sizes} px) recorded for predict --scale auto "
        f"(the default): val AP_dsb@0.5 {auto['AP_dsb@0.5']:.3f} with it, "
        f"{len(auto['resized'])} of {len(val_samples)} images resized"
    )
    if size_model and sm is not None:
        change = (
            f"same weights; a size model (ridge regression of the log object diameter on pooled "
            f"encoder features, fitted on {sm['n_images']} training images x "
            f"{len(sm['scales'])} scales) sets the first factor of predict --scale auto: val "
            f"AP_dsb@0.5 {auto['AP_dsb@0.5']:.3f} with auto, {len(auto['resized'])} of "
            f"{len(val_samples)} images resized"
        )
    card["history"] = history_with(name, card, change)
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    write_card(name)
    return {"name": name, "object_diameter": cfg.data.object_diameter, **auto}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--card":  # only (re)write the model card of a shipped model
        for name in argv[1:]:
            print(write_card(name))
        return 0
    if argv and argv[0] in ("--record-sizes", "--fit-size-model"):  # shipped: --scale auto
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        torch.set_num_threads(1)
        for name in argv[1:]:
            print(json.dumps(record_sizes(name, size_model=argv[0] == "--fit-size-model")))
        return 0
    ap.add_argument("config", help="run config YAML (configs/pretrained/<name>.yaml)")
    ap.add_argument("--name", required=True, help="pretrained model name, e.g. bbbc039-nuclei")
    ap.add_argument("--dataset", required=True, choices=("bbbc039", "bbbc010", "dsb2018"))
    ap.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    ap.add_argument("--data-root", default=None, help="folder holding the data sets")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--time-limit", type=float, default=None, help="stop training after S s")
    ap.add_argument("--ship", action="store_true", help="write src/instembed/pretrained/<name>.*")
    ap.add_argument("--note", default=None, help="a line for the model card (how it was trained)")
    ap.add_argument(
        "--size-model",
        action="store_true",
        help="fit a size model (instembed.engine.size_model) for the new weights on the "
        "training split (done anyway when the shipped version of --name has one)",
    )
    ap.add_argument(
        "--change",
        default=None,
        help="what this version changed (a row of the card's history table; default: --note)",
    )
    ap.add_argument(
        "--resume", action="store_true", help="continue the run in --out (e.g. -o run.steps=N)"
    )
    ap.add_argument(
        "--init",
        default=None,
        help="start from these weights (a checkpoint, or a shipped model's name); fresh optimizer",
    )
    ap.add_argument(
        "--finish", action="store_true", help="skip training: select/tune/ship from --out"
    )
    ap.add_argument(
        "--retune",
        action="store_true",
        help="skip training: re-tune the shipped model <name> (its weights the only candidate; "
        "steps, time and stages kept from its card), e.g. with -o cluster.params.connected=true",
    )
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="--time-limit and the recorded training time count this process's CPU seconds",
    )
    ap.add_argument(
        "--no-tune",
        action="store_true",
        help="keep the config's clustering thresholds (with -o cluster.params.K=V) instead of "
        "tuning them on the val split",
    )
    ap.add_argument(
        "--keep-within",
        type=float,
        default=0.0,
        metavar="EPS",
        help="keep the shipped card's thresholds unless the best setting beats them by more "
        "than EPS (AP_dsb@0.5 on the val split)",
    )
    ap.add_argument("-o", "--override", action="append", default=[], help="key=value override")
    args = ap.parse_args(argv)
    if not args.keep_within >= 0:
        ap.error(f"--keep-within: expected a number >= 0, got {args.keep_within}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    root = Path(args.data_root) if args.data_root else data_root()
    path = root / args.dataset
    cfg = load_config(args.config, [*args.override, f"data.path={path}"])
    train_samples, val_samples = load_split(cfg, args.dataset)
    if cfg.data.object_diameter is None:  # the training sizes behind predict --scale auto
        cfg.data.object_diameter = training_sizes(train_samples)
    out = Path(args.out)
    # warm start from a shipped model: its training time and steps count towards this one's
    prior = None
    if args.retune:  # the shipped weights as a finished run: steps, time, stages from its card
        shipped = json.loads((PRETRAINED / f"{args.name}.json").read_text())
        out.mkdir(parents=True, exist_ok=True)
        state = ck.load_checkpoint(PRETRAINED / f"{args.name}.pt")
        ck.save_checkpoint(
            out / "last.pt",
            model_state=state["model"],
            config_yaml=config_to_yaml(cfg),
            step=int(shipped["best_step"]),
        )
        prior = shipped.get("init")
        own_s = shipped["train_seconds"] - (prior["train_seconds"] if prior else 0.0)
        (out / "train_time.json").write_text(
            json.dumps({"steps": shipped["steps"], "seconds": own_s})
        )
        args.finish, args.init = True, None
        args.note = args.note or shipped.get("note")
    if args.init is not None and (PRETRAINED / f"{args.init}.json").is_file():
        d = json.loads((PRETRAINED / f"{args.init}.json").read_text())
        # all the steps and time behind those weights (their own warm start included)
        steps_before = d["steps"] + (d["init"]["steps"] if d.get("init") else 0)
        prior = {"model": args.init, "steps": steps_before, "train_seconds": d["train_seconds"]}
    if args.finish:  # training already done in --out: only select, tune and ship
        steps, train_s = finished_run(out)
    else:
        before = finished_run(out)[1] if args.resume else 0.0
        _, result, train_s = train_on_split(
            cfg,
            out,
            train_samples,
            val_samples,
            args.time_limit,
            resume=args.resume,
            init=init_path(args.init),
            cpu_time=args.cpu_time,
        )
        if args.cpu_time:
            train_s = result.cpu_s
        train_s += before
        steps = result.step
        (out / "train_time.json").write_text(json.dumps({"steps": steps, "seconds": train_s}))

    # candidates: the best checkpoint of the in-training validation and the last one; each gets
    # its clustering thresholds tuned on the val split; the better pair (AP_dsb@0.5) is kept
    if prior is not None:
        train_s += prior["train_seconds"]
    from instembed.engine.build import build_model_from_config

    model = build_model_from_config(cfg.model)
    # --keep-within EPS > 0: the incumbent is the shipped card's values of the keys tuned
    incumbent, card_path = None, PRETRAINED / f"{args.name}.json"
    if args.keep_within > 0 and not args.no_tune and card_path.is_file():
        shipped = json.loads(card_path.read_text())["cluster"]
        if shipped["method"] == cfg.cluster.method:
            tried = default_grid(cfg.cluster.method, val_samples)
            incumbent = {k: v for k, v in shipped["params"].items() if k in tried}
        log.info("incumbent thresholds of %s: %s", card_path.name, incumbent)
    best = None
    for cand in ("best.pt", "last.pt"):
        path = out / cand
        if not path.is_file():
            continue
        state = ck.load_checkpoint(path)
        ck.load_model_state(model, state["model"], source=str(path))
        step = int(state["step"])
        if best is not None and step == best[0]:
            continue
        # the network runs once per image; only the clustering is repeated per setting
        outputs = network_outputs(model, val_samples)
        # --no-tune: an empty grid scores the config's clustering as it is
        tuned = tune_thresholds(
            outputs,
            val_samples,
            cfg.cluster,
            grid={} if args.no_tune else None,
            incumbent=incumbent,
            keep_within=args.keep_within,
        )
        chosen, metrics, rows = tuned.params, tuned.metrics, tuned.rows
        log.info("%s (step %d): AP_dsb@0.5 %.4f with %s", cand, step, metrics["AP_dsb@0.5"], chosen)
        key = (metrics["AP_dsb@0.5"], metrics["AP"])
        if best is None or key > best[1]:
            best = (
                step,
                key,
                chosen,
                metrics,
                rows,
                {k: v.clone() for k, v in state["model"].items()},
                outputs,
            )
    assert best is not None, f"no checkpoint in {out}"
    best_step, _, chosen, metrics, rows, weights_state, best_outputs = best
    model.load_state_dict(weights_state)
    model.eval()
    cfg.cluster.params.update(chosen)
    by_look = None
    if args.dataset == "dsb2018":  # the val metrics per look (fluorescence, bright-field, H&E)
        by_look = metrics_by_group(
            best_outputs,
            val_samples,
            cfg.cluster,
            lambda s: LOOK_NAMES[sample_look(s)],
        )
        log.info("val by look: %s", by_look)
    size_model = None
    shipped_pt = PRETRAINED / f"{args.name}.pt"
    if args.size_model or (
        shipped_pt.is_file() and ck.load_checkpoint(shipped_pt).get("size_model") is not None
    ):  # asked for, or the shipped version has one: the new weights get their own
        from instembed.engine.size_model import fit_size_model

        fitted = fit_size_model(model, train_samples)
        if fitted is not None:
            model.size_model, size_model = fitted, fitted.to_dict()
    auto = auto_scale_metrics(model, cfg, val_samples)
    log.info("val with scale auto: %s", auto)
    vs_shipped = compare_with_shipped(args.name, args.dataset, cfg, best_outputs, val_samples)
    log.info("against the shipped %s (paired bootstrap over val images): %s", args.name, vs_shipped)
    summary = {
        "name": args.name,
        "dataset": args.dataset,
        "split": {
            "module": "instembed.data.splits",
            "seed": SEED,
            "val_fraction": VAL_FRACTION,
            "n_train": len(train_samples),
            "n_val": len(val_samples),
        },
        "steps": steps,
        "best_step": best_step,
        "train_seconds": round(train_s, 1),
        "machine": machine(),
        "note": args.note,
        "init": prior,
        "cluster": {"method": cfg.cluster.method, "params": cfg.cluster.params},
        "cluster_grid": rows,
        "val_metrics": {
            **{k: metrics.get(k) for k in METRICS},
            "AP_dsb@0.5:0.95": metrics.get("AP_dsb@0.5:0.95"),
            "FP_per_image@0.5": metrics["FP@0.5"] / len(val_samples),
            "FN_per_image@0.5": metrics["FN@0.5"] / len(val_samples),
        },
        "val_metrics_all": {k: v for k, v in metrics.items()},
        "val_by_look": by_look,
        "val_auto_scale": auto,
        "vs_shipped": vs_shipped,
        "size_model": size_model is not None,
    }
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1))
    if args.ship:
        PRETRAINED.mkdir(parents=True, exist_ok=True)
        weights = PRETRAINED / f"{args.name}.pt"
        ck.save_checkpoint(
            weights,
            model_state=model.state_dict(),
            config_yaml=config_to_yaml(cfg),
            step=summary["best_step"],
            metrics={k: float(v) for k, v in metrics.items()},
            size_model=size_model,
        )
        card = {"name": args.name, "sha256": sha256_file(weights), "config": config_to_dict(cfg)}
        card.update({k: v for k, v in summary.items() if k not in ("name", "cluster_grid")})
        card.pop("val_metrics_all")
        card["history"] = history_with(args.name, card, args.change or args.note or "")
        card["n_params"] = sum(p.numel() for p in model.parameters())
        (PRETRAINED / f"{args.name}.json").write_text(json.dumps(card, indent=1) + "\n")
        write_card(args.name)
        log.info("shipped %s (%.1f MB)", weights, weights.stat().st_size / 2**20)
    print(
        json.dumps(
            {"name": args.name, **summary["val_metrics"], "train_s": summary["train_seconds"]}
        )
    )
    if not args.ship:  # easy to forget after a long re-tune: say where the result went
        print(f"not shipped (no --ship): the summary is in {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
