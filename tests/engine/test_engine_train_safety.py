"""`instembed train` never destroys or mixes runs: refusal of an occupied --out, --overwrite,
fresh / resumed logs without duplicate steps, no half-made files after an early failure, and the
no-validation warning. Tiny synthetic runs (dot grid, a depth-1 U-Net, a few steps)."""

import csv
import math

import pytest
import yaml

from instembed.cli import main
from instembed.engine import checkpoint as ck
from instembed.engine.config import config_from_dict
from instembed.engine.trainer import BEST, LAST, NonFiniteLossError, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(n_val=0, **run):
    return {
        "data": {
            "synth": "dot_grid",
            "synth_params": {"radius": 3, "spacing": 12},
            "n_train": 4,
            "n_val": n_val,
            "size": [32, 32],
            "batch_size": 2,
        },
        "model": {
            "name": "embedding",
            "backbone": "unet",
            "params": {"heads": {"embedding": 2}, "depth": 1, "width": 4},
        },
        "cluster": {"method": "threshold", "params": {"delta_v": 0.5}},
        "optim": {"lr": 0.01},
        "run": {
            "steps": 2,
            "val_every": 0,
            "ckpt_every": 0,
            "log_every": 1,
            "progress": False,
            "tensorboard": False,
            **run,
        },
    }


def write_cfg(folder, name="tiny", **kw):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny(**kw)))
    return path


def steps_of(path):
    with open(path, newline="") as fh:
        return [int(float(r["step"])) for r in csv.DictReader(fh)]


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err
    return err


# ----------------------------------------------------------------------- refusing / overwriting
def test_train_refuses_a_folder_that_holds_a_run(tmp_path, capsys):
    cfg = write_cfg(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    before = (out / LAST).read_bytes()
    log_before = (out / "train_log.csv").read_text()
    capsys.readouterr()

    assert main(["train", str(cfg), "run.steps=3", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert str(out) in err and "--resume" in err and "--overwrite" in err
    # nothing touched
    assert (out / LAST).read_bytes() == before
    assert (out / "train_log.csv").read_text() == log_before

    # both options at once: refused as well
    assert main(["train", str(cfg), "--out", str(out), "--resume", "--overwrite"]) == 2
    one_line_error(capsys)


def test_default_out_refuses_the_second_time(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cfg(tmp_path, name="dots")
    assert main(["train", "dots.yaml"]) == 0
    assert (tmp_path / "runs" / "dots" / LAST).is_file()
    capsys.readouterr()
    assert main(["train", "dots.yaml"]) == 2
    err = one_line_error(capsys)
    assert "runs/dots" in err and "--resume" in err and "--overwrite" in err


def test_overwrite_starts_over_without_mixing_old_and_new(tmp_path, capsys):
    out = tmp_path / "run"
    # the old run: 3 steps, validated every step (best.pt, val_log.csv)
    old = write_cfg(tmp_path, name="old", n_val=1, steps=3, val_every=1, ckpt_every=1)
    assert main(["train", str(old), "--out", str(out)]) == 0
    assert (out / BEST).is_file() and steps_of(out / "val_log.csv") == [1, 2, 3]
    (out / "notes.txt").write_text("mine")  # not a run file: left alone
    # the new run: 2 steps, no validation
    new = write_cfg(tmp_path, name="new", n_val=0, steps=2)
    assert main(["train", str(new), "--out", str(out), "--overwrite"]) == 0
    assert steps_of(out / "train_log.csv") == [1, 2]  # a fresh log, not appended
    assert not (out / "val_log.csv").exists()  # the old run's validation log is gone
    assert ck.load_checkpoint(out / LAST)["step"] == 2
    assert ck.load_checkpoint(out / BEST)["step"] == 2  # the new run's weights
    assert "best" not in ck.load_checkpoint(out / BEST)  # not the old run's selection
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["steps"] == 2
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path, capsys):
    cfg = write_cfg(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    before = (out / LAST).read_bytes()
    # a config error found while building the run (not by the schema): the old run stays
    assert main(["train", str(cfg), "model.name=nope", "--out", str(out), "--overwrite"]) == 2
    assert (out / LAST).read_bytes() == before


# ----------------------------------------------------------------------- logs
def test_library_fresh_run_starts_fresh_logs(tmp_path):
    cfg = config_from_dict(tiny(steps=2))
    Trainer(cfg, tmp_path).fit()
    Trainer(cfg, tmp_path).fit()  # a second fresh run into the same folder
    assert steps_of(tmp_path / "train_log.csv") == [1, 2]


def test_resumed_run_logs_each_step_once(tmp_path):
    # fails after step 3 with the last checkpoint at step 2: rows 3 (train and val) were written
    # after that checkpoint and are replayed by the resumed run
    raw = tiny(n_val=1, steps=5, val_every=1, ckpt_every=2)
    cfg = config_from_dict(raw)
    first = Trainer(cfg, tmp_path)
    real_step = first.train_step

    def failing_step(batch):
        if first.step == 3:
            raise RuntimeError("simulated crash")
        return real_step(batch)

    first.train_step = failing_step
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.fit()
    assert ck.load_checkpoint(tmp_path / LAST)["step"] == 2
    assert steps_of(tmp_path / "train_log.csv") == [1, 2, 3]
    assert steps_of(tmp_path / "val_log.csv") == [1, 2, 3]

    res = Trainer(cfg, tmp_path, resume=True).fit()
    assert res.step == 5
    assert steps_of(tmp_path / "train_log.csv") == [1, 2, 3, 4, 5]
    assert steps_of(tmp_path / "val_log.csv") == [1, 2, 3, 4, 5]


def test_cli_resume_continues_the_log(tmp_path, capsys):
    cfg = write_cfg(tmp_path)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    assert main(["train", str(cfg), "run.steps=4", "--out", str(out), "--resume"]) == 0
    assert steps_of(out / "train_log.csv") == [1, 2, 3, 4]


# ----------------------------------------------------------------------- failures
def _nan_at_step_1(monkeypatch):
    def train_step(self, batch):
        raise NonFiniteLossError(self.step + 1, {"loss": math.nan}, self.last_saved)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_failure_at_step_1_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    cfg = write_cfg(tmp_path, n_val=1, val_every=1)
    out = tmp_path / "runs" / "new"
    _nan_at_step_1(monkeypatch)
    assert main(["train", str(cfg), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "non-finite loss at step 1" in err
    assert not out.exists()  # the run created it, the run removed it
    # and the next try is not refused for a half-made run
    monkeypatch.undo()
    assert main(["train", str(cfg), "--out", str(out)]) == 0


def test_failure_before_first_checkpoint_in_an_existing_folder(tmp_path, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    _nan_at_step_1(monkeypatch)
    with pytest.raises(NonFiniteLossError):
        Trainer(config_from_dict(tiny()), out).fit()
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_no_best_without_a_last_checkpoint(tmp_path):
    # validated at step 1 (best.pt written), checkpoints only at the end, fails at step 2
    cfg = config_from_dict(tiny(n_val=1, steps=4, val_every=1, ckpt_every=0))
    tr = Trainer(cfg, tmp_path / "run")
    real_step = tr.train_step

    def failing_step(batch):
        if tr.step == 1:
            raise RuntimeError("simulated crash")
        return real_step(batch)

    tr.train_step = failing_step
    with pytest.raises(RuntimeError):
        tr.fit()
    out = tmp_path / "run"
    assert (out / BEST).is_file()
    assert ck.load_checkpoint(out / LAST)["step"] == 1  # best.pt never stands alone


# ----------------------------------------------------------------------- no validation set
def test_no_validation_images_is_said_and_logged(tmp_path, capsys):
    cfg = write_cfg(tmp_path, n_val=0)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "no validation" in captured.err and "best.pt" in captured.err
    assert (out / BEST).is_file()  # best = last, as before, but said
    run_log = (out / "run.log").read_text()  # the run's own log says it too
    assert "no validation" in run_log and "best.pt" in run_log


def test_validated_run_does_not_warn(tmp_path, capsys):
    cfg = write_cfg(tmp_path, n_val=1, val_every=1)
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    assert "no validation" not in capsys.readouterr().err
    assert "no validation" not in (out / "run.log").read_text()
