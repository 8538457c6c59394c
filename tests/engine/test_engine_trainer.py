"""Training loop: short runs on the synthetic dot grid, resume, faults, torchrun (gloo)."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from instembed.engine import checkpoint as ck
from instembed.engine.config import config_from_dict, load_config
from instembed.engine.optim import lr_factor
from instembed.engine.trainer import LAST, NonFiniteLossError, Trainer

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**run):
    return config_from_dict(
        {
            "data": {
                "synth": "dot_grid",
                "synth_params": {"radius": 3, "spacing": 12},
                "n_train": 6,
                "n_val": 0,
                "size": [40, 40],
                "crop": [32, 32],
                "batch_size": 2,
            },
            "model": {
                "name": "unet",
                "heads": {"embedding": 4},
                "semiconv": True,
                "params": {"depth": 2, "width": 4},
            },
            "loss": {"name": "discriminative"},
            "optim": {"lr": 0.01},
            "run": {
                "steps": 4,
                "val_every": 0,
                "ckpt_every": 1,
                "log_every": 1,
                "progress": False,
                "tensorboard": False,
                **run,
            },
        }
    )


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_step_run_writes_checkpoint_config_and_log(tmp_path):
    cfg = tiny_config(steps=2)
    tr = Trainer(cfg, tmp_path)
    before = _weights(tr.model)
    res = tr.fit()
    assert res.status == "done" and res.step == 2
    state = ck.load_checkpoint(tmp_path / LAST)
    assert state["step"] == 2
    assert load_config(tmp_path / "config.yaml") == cfg  # resolved config beside the checkpoint
    changed = [
        k
        for k, v in state["model"].items()
        if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert changed, "no parameter moved in 2 steps"
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert {"loss", "lr", "images_per_s"} <= set(rows[0])
    # the logged loss is the sum of the weighted terms of the discriminative loss (alpha=beta=1,
    # gamma=0.001 by default): total = var + dist + 0.001 * reg
    r = rows[0]
    assert float(r["loss"]) == pytest.approx(
        float(r["var"]) + float(r["dist"]) + 0.001 * float(r["reg"]), rel=1e-4
    )
    assert (tmp_path / "best.pt").is_file()  # no validation set: best = last


def test_resume_equals_uninterrupted(tmp_path):
    cfg = tiny_config(steps=4)
    straight = Trainer(cfg, tmp_path / "a")
    straight.fit()
    first = Trainer(cfg, tmp_path / "b")
    assert first.fit(stop_at=2).status == "stopped"
    del first
    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    second = Trainer(cfg, tmp_path / "b", resume=True)
    assert second.step == 2
    second.fit()
    a, b = straight.model.state_dict(), second.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert straight.scheduler.get_last_lr() == second.scheduler.get_last_lr()
    rows = list(csv.DictReader(open(tmp_path / "b" / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # the log is appended, not restarted


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # lr 1e30 without clipping: Adam moves every weight by ~1e30 per step, the activations
    # overflow and the loss becomes inf/NaN within a few steps
    cfg = tiny_config(steps=20)
    cfg.optim.lr = 1e30
    cfg.optim.grad_clip = None
    tr = Trainer(cfg, tmp_path)
    with pytest.raises(NonFiniteLossError) as info:
        tr.fit()
    err = info.value
    assert err.step >= 2 and "loss" in err.terms and "var" in err.terms
    assert f"step {err.step}" in str(err)
    state = ck.load_checkpoint(tmp_path / LAST)
    assert state["step"] == err.step - 1  # written after the last good step, not overwritten
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_given_datasets_replace_the_config_data(tmp_path):
    from instembed.data.dataset import InstanceDataset
    from instembed.data.synth import make_samples

    cfg = tiny_config(steps=1)
    cfg.cluster.method = "kmeans"  # true K: quick on untrained embeddings
    samples = make_samples("touching_cells", 3, size=(32, 32), seed=5)
    tr = Trainer(cfg, tmp_path, train_set=InstanceDataset(samples[:2]), val_samples=samples[2:])
    assert len(tr.train_set) == 2 and len(tr.val_samples) == 1  # not the 6 dot grids of cfg
    assert tr.fit().step == 1


def test_lr_schedules_by_hand():
    # poly: (1 - t)^p with t = step / total; cosine: (1 + cos(pi t)) / 2; warm-up linear
    assert lr_factor(0, 10, "poly", 0.9, 0, 0.0) == 1.0
    assert lr_factor(5, 10, "poly", 1.0, 0, 0.0) == pytest.approx(0.5)
    assert lr_factor(5, 10, "cosine", 0.9, 0, 0.0) == pytest.approx(0.5)
    assert lr_factor(10, 10, "cosine", 0.9, 0, 0.1) == pytest.approx(0.1)  # floor = min_lr / lr
    assert lr_factor(1, 10, "poly", 0.9, 4, 0.0) == pytest.approx(0.5)  # warm-up step 2 of 4


def _write_cfg(tmp_path, cfg):
    from instembed.engine.config import save_config

    return save_config(cfg, tmp_path / "cfg.yaml")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _wait_for_step(log_path, step, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.communicate()}")
        if log_path.is_file() and len(log_path.read_text().splitlines()) > step:
            return
        time.sleep(0.1)
    raise AssertionError("training did not reach the step in time")


def test_sigkill_during_training_leaves_loadable_checkpoint(tmp_path):
    cfg = tiny_config(steps=100_000)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "instembed",
        "train",
        str(_write_cfg(tmp_path, cfg)),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_step(out / "train_log.csv", 3, proc)
        time.sleep(0.15)  # land somewhere inside a later step / checkpoint write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = ck.load_checkpoint(out / LAST)  # atomic writes: never a torn file
    assert state["step"] >= 3
    tr = Trainer(cfg, out, resume=True)
    assert tr.step == state["step"]


def test_sigint_writes_final_checkpoint(tmp_path):
    cfg = tiny_config(steps=100_000, ckpt_every=1000)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "instembed",
        "train",
        str(_write_cfg(tmp_path, cfg)),
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_step(out / "train_log.csv", 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rows = list(csv.DictReader(open(out / "train_log.csv")))
    # no periodic checkpoint before step 1000: this one was written on Ctrl-C, at the last step
    assert ck.load_checkpoint(out / LAST)["step"] == int(rows[-1]["step"]) >= 2


RANK_SCRIPT = """
import sys, torch
from instembed.engine.config import load_config
from instembed.engine.trainer import Trainer
cfg = load_config(sys.argv[1])
tr = Trainer(cfg, sys.argv[2])
tr.fit()
torch.save(tr.model.state_dict(), f"{sys.argv[2]}/rank{tr.dist.rank}.pt")
print("world", tr.dist.world, "rank", tr.dist.rank, "step", tr.step)
tr.close()
"""


def test_validation_metrics_and_best_model(tmp_path):
    cfg = tiny_config(steps=2, val_every=1, best_metric="AP")
    cfg.data.n_val = 2
    cfg.cluster.method = "kmeans"  # no k: the true number of dots (validation protocol)
    tr = Trainer(cfg, tmp_path)
    res = tr.fit()
    rows = list(csv.DictReader(open(tmp_path / "val_log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert {"AP", "AP50", "SBD", "PQ"} <= set(rows[0])
    best = ck.load_checkpoint(tmp_path / "best.pt")
    aps = [float(r["AP"]) for r in rows]
    assert res.best["value"] == pytest.approx(max(aps))
    assert best["step"] == res.best["step"] == 1 + aps.index(max(aps))
    assert "optimizer" not in best  # best.pt holds weights only


def test_torchrun_two_processes_gloo_identical_weights(tmp_path):
    cfg = tiny_config(steps=2)
    cfg.data.n_val = 3  # ranks validate 2 and 1 images; the merged metrics cover all 3
    cfg.cluster.method = "kmeans"
    script = tmp_path / "rank_train.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", str(script), str(_write_cfg(tmp_path, cfg)), str(out),
    ]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world 2 rank 0 step 2" in res.stdout and "world 2 rank 1 step 2" in res.stdout
    w0 = torch.load(out / "rank0.pt", weights_only=True)
    w1 = torch.load(out / "rank1.pt", weights_only=True)
    saved = ck.load_checkpoint(out / LAST)["model"]
    init = Trainer(cfg, tmp_path / "fresh").model.state_dict()  # same seed -> same init
    moved = False
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # DDP keeps the replicas identical
        assert torch.equal(w0[k], saved[k]), k  # rank 0 wrote the checkpoint
        moved |= not torch.equal(w0[k], init[k])
    assert moved
    # metrics gathered over ranks == one process validating the same weights on all images
    from instembed.engine.evaluation import validate

    model = Trainer(cfg, tmp_path / "fresh2").model
    model.load_state_dict(saved)
    single = validate(
        model, Trainer(cfg, tmp_path / "fresh3").val_samples, cfg, torch.device("cpu")
    )
    stored = ck.load_checkpoint(out / LAST)["metrics"]
    assert stored and stored.keys() == single.keys()
    for k, v in single.items():
        assert stored[k] == pytest.approx(v, nan_ok=True), k


def test_validation_with_tuned_thresholds_is_the_best_of_the_grid(tmp_path):
    import dataclasses

    from instembed.engine.evaluation import validate
    from instembed.engine.tune import GRIDS

    cfg = tiny_config(steps=60, ckpt_every=0, val_tune=True)
    cfg.data.n_val = 2
    cfg.cluster.method = "meanshift"
    cfg.cluster.params = {"bandwidth": 0.5}
    tr = Trainer(cfg, tmp_path)
    tr.fit()
    tuned = validate(tr.model, tr.val_samples, cfg, tr.device)
    assert tuned["cluster/bandwidth"] in GRIDS["meanshift"]["bandwidth"]
    # independently: plain validation at every bandwidth of the grid
    plain = {}
    for bw in GRIDS["meanshift"]["bandwidth"]:
        c = dataclasses.replace(
            cfg,
            run=dataclasses.replace(cfg.run, val_tune=False),
            cluster=dataclasses.replace(cfg.cluster, params={"bandwidth": bw}),
        )
        plain[bw] = validate(tr.model, tr.val_samples, c, tr.device)
    best = max(plain.values(), key=lambda m: (m["AP_dsb@0.5"], m["AP"]))
    assert len({m["AP_dsb@0.5"] for m in plain.values()}) > 1  # the choice matters here
    assert tuned["AP_dsb@0.5"] == pytest.approx(best["AP_dsb@0.5"])
    assert tuned["AP"] == pytest.approx(best["AP"])
    chosen = plain[tuned["cluster/bandwidth"]]
    assert (chosen["AP_dsb@0.5"], chosen["AP"]) == (best["AP_dsb@0.5"], best["AP"])


def test_training_records_the_object_sizes_of_its_training_set(tmp_path):
    import numpy as np

    from instembed.engine.build import load_samples
    from instembed.engine.predict import load_model

    cfg = tiny_config(steps=1)
    cfg.data.n_train = 3
    assert cfg.data.object_diameter is None
    Trainer(cfg, tmp_path).fit()
    # by hand: each object's sqrt(4 area / pi), the median per image, percentiles 5 / 50 / 95
    train, _ = load_samples(cfg.data, cfg.run.seed)
    per_image = []
    for s in train:
        lab = s.instances
        d = [2 * np.sqrt((lab == i).sum() / np.pi) for i in range(1, lab.max() + 1)]
        per_image.append(np.median([v for v in d if v > 0]))
    expect = np.percentile(per_image, [5, 50, 95])
    np.testing.assert_allclose(cfg.data.object_diameter, expect, atol=0.006)
    _, stored = load_model(tmp_path / LAST)  # kept in the checkpoint's config
    assert stored.data.object_diameter == cfg.data.object_diameter
    # a disc of radius 3 has 29 pixels: diameter 2 sqrt(29 / pi) = 6.08
    assert abs(cfg.data.object_diameter[1] - 2 * np.sqrt(29 / np.pi)) < 0.5
