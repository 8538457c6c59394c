"""Checks before work starts, and progress on long single operations.

* the cluster section of a training config (method, parameter names, types, required ones;
  k-means may leave out ``k``, which validation takes from the ground truth), ``predict`` /
  ``tune`` ``--cluster`` overrides and ``tune --grid`` values: one-line errors naming the key;
* ``predict`` refuses k-means without ``k`` (``--cluster k=N``);
* the dot-grid config trains and predicts from the command line (as the demo's semi-conv model);
* progress bars: predict over the blocks of a large image, tune over the grid settings,
  validation over many images;
* ``evaluate --skip-bad``.
"""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from instembed.cli import main
from instembed.engine import checkpoint as ck
from instembed.engine.config import (
    ClusterConfig,
    Config,
    ConfigError,
    check_cluster,
    cluster_param_types,
    config_to_yaml,
    load_config,
)
from instembed.models import build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DOT_GRID = CONFIGS / "dot_grid_semiconv.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def tiny_train_cfg(tmp_path, cluster, n_val=2):
    data = {
        "data": {"synth": "dot_grid", "n_train": 2, "n_val": n_val, "size": [32, 32]},
        "model": {
            "name": "embedding",
            "backbone": "unet",
            "params": {"heads": {"embedding": 2}, "depth": 1, "width": 4},
        },
        "cluster": cluster,
        "run": {"steps": 1, "progress": False, "tensorboard": False},
    }
    if cluster is None:
        del data["cluster"]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def checkpoint(path: Path, cluster: ClusterConfig, heads=None) -> Path:
    heads = heads or {"embedding": 4, "seed": 1, "sigma": 2}
    cfg = Config()
    cfg.model.params = {"heads": heads, "depth": 2, "width": 4}
    cfg.cluster = cluster
    torch.manual_seed(0)
    model = build_model("unet", heads=heads, depth=2, width=4)
    ck.save_checkpoint(
        path, model_state=model.state_dict(), config_yaml=config_to_yaml(cfg), step=0
    )
    return path


def image_file(path: Path, size=(40, 40)) -> Path:
    img = (np.random.default_rng(0).random(size) * 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


class FakeTqdm:
    """Stands in for tqdm.auto.tqdm: records every bar (desc, unit, total, final n)."""

    made: list = []

    def __init__(self, iterable=None, total=None, desc=None, unit="it", **kw):
        self.iterable, self.total, self.desc, self.unit, self.n = iterable, total, desc, unit, 0
        if total is None and iterable is not None:
            self.total = len(iterable)
        self.closed = False
        FakeTqdm.made.append(self)

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.n += 1

    def update(self, k=1):
        self.n += k

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    import tqdm.auto

    FakeTqdm.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", FakeTqdm)
    return FakeTqdm.made


# ----------------------------------------------------------------------- the cluster section
@pytest.mark.parametrize(
    "cluster, expected",
    [
        ({"method": "threshold", "params": {}}, r"cluster\.params\.delta_v: required by method"),
        ({"method": "meanshift", "params": {"min_size": 5}}, r"cluster\.params\.bandwidth"),
        ({"method": "meanshfit", "params": {}}, r"cluster\.method: unknown clustering method"),
        (
            {"method": "meanshift", "params": {"bandwith": 0.5}},
            r"cluster\.params\.bandwith: unknown parameter of method 'meanshift'",
        ),
        (
            {"method": "seeded", "params": {"seed_thresh": "high"}},
            r"cluster\.params\.seed_thresh: expected float, got str 'high'",
        ),
        ({"method": "kmeans", "params": {"k": 2.5}}, r"cluster\.params\.k: expected int"),
        (
            {"method": "threshold", "params": {"delta_v": 0.5, "overlap_thresh": 0.3}},
            r"cluster\.params\.overlap_thresh: overlap_thresh \(overlapping masks\) needs",
        ),
    ],
)
def test_training_config_cluster_section_is_checked_on_load(tmp_path, cluster, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(tiny_train_cfg(tmp_path, cluster))


def test_cluster_errors_list_the_valid_names(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tiny_train_cfg(tmp_path, {"method": "meanshift", "params": {"bandwith": 1}}))
    assert "'bandwidth'" in str(err.value) and "'foreground_classes'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(tiny_train_cfg(tmp_path, {"method": "nope"}))
    assert "'seeded'" in str(err.value) and "'meanshift'" in str(err.value)


def test_train_refuses_a_missing_cluster_parameter_before_training(tmp_path, capsys):
    cfg = tiny_train_cfg(tmp_path, {"method": "threshold", "params": {"min_size": 3}})
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "cluster.params.delta_v" in err and "'delta_v'" in err
    assert not out.exists()  # nothing trained, nothing written


def test_values_are_checked_and_numbers_normalised(tmp_path):
    cfg = load_config(
        tiny_train_cfg(
            tmp_path, {"method": "seeded", "params": {"seed_thresh": 1, "fg_thresh": "5e-1"}}
        )
    )
    assert cfg.cluster.params == {"seed_thresh": 1.0, "fg_thresh": 0.5}
    assert isinstance(cfg.cluster.params["seed_thresh"], float)
    # types come from the method table's functions, plus the dispatcher's and the engine's
    types = cluster_param_types("seeded")
    assert types["seed_thresh"] is float and types["min_size"] is int
    assert "foreground_classes" in types and "stuff_classes" in types
    assert cluster_param_types("kmeans")["k"] is int


def test_kmeans_without_k_trains_but_does_not_predict(tmp_path):
    cfg = load_config(tiny_train_cfg(tmp_path, {"method": "kmeans", "params": {}}))
    assert cfg.cluster.method == "kmeans"  # validation fills k from the ground truth
    with pytest.raises(ConfigError, match=r"--cluster k: required by method 'kmeans'.*k=N"):
        check_cluster(cfg.cluster, require=True, key="--cluster")
    assert check_cluster(ClusterConfig("kmeans", {"k": 3})).params == {"k": 3}


def test_required_parameters_are_checked_when_the_run_validates(tmp_path):
    # mean-shift without a bandwidth cannot cluster the validation images
    no_bandwidth = {"method": "meanshift", "params": {"min_size": 3}}
    with pytest.raises(ConfigError, match=r"cluster\.params\.bandwidth: required"):
        load_config(tiny_train_cfg(tmp_path, no_bandwidth, n_val=2))
    # no validation images: nothing is clustered while training (predict checks for itself)
    assert (
        load_config(tiny_train_cfg(tmp_path, no_bandwidth, n_val=0)).cluster.method == "meanshift"
    )
    with pytest.raises(ConfigError, match=r"cluster\.params\.bandwith: unknown"):  # still checked
        load_config(tiny_train_cfg(tmp_path, {"method": "meanshift", "params": {"bandwith": 1}}, 0))


def test_no_cluster_section_gets_a_clusterer_that_works(tmp_path):
    from instembed.engine.config import DEFAULT_CLUSTER

    cfg = load_config(tiny_train_cfg(tmp_path, None, n_val=2))
    assert cfg.cluster == ClusterConfig(**DEFAULT_CLUSTER)
    assert check_cluster(cfg.cluster, require=True).params == {"bandwidth": 0.5}
    assert load_config(None).cluster == cfg.cluster


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_predict_without_ground_truth(path):
    # every shipped config's clusterer has what prediction needs (no k-means without k)
    check_cluster(load_config(path).cluster, require=True)


# ----------------------------------------------------------------------- predict --cluster
@pytest.fixture(scope="module")
def seeded_model(tmp_path_factory):
    return checkpoint(
        tmp_path_factory.mktemp("seeded") / "m.pt", ClusterConfig("seeded", {"seed_thresh": 0.9})
    )


@pytest.mark.parametrize(
    "items, expected",
    [
        (["seed_thresh=abc"], "--cluster seed_thresh: expected float, got str 'abc'"),
        (["min_size=big"], "--cluster min_size: expected int, got str 'big'"),
        (["seed_tresh=0.5"], "--cluster seed_tresh: unknown parameter of method 'seeded'"),
        (["method=nope"], "--cluster method: unknown clustering method 'nope'"),
        (["method=threshold"], "--cluster delta_v: required by method 'threshold'"),
        (["method=kmeans"], "pass --cluster k=N"),
        (["seed_thresh"], "expected KEY=VALUE"),
        (["seed_thresh=[0.5"], "--cluster seed_thresh: value '[0.5' is not valid YAML"),
    ],
)
def test_predict_cluster_overrides_are_checked(seeded_model, tmp_path, capsys, items, expected):
    image = image_file(tmp_path / "a.png")
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            str(image),
            "--model",
            str(seeded_model),
            "--out",
            str(out),
            "--cluster",
            *items,
        ]
    )
    assert rc == 2
    assert expected in one_line_error(capsys)
    assert not out.exists()  # refused before any image


def test_predict_refuses_kmeans_without_k(tmp_path, capsys):
    model = checkpoint(tmp_path / "km.pt", ClusterConfig("kmeans", {}), heads={"embedding": 4})
    image = image_file(tmp_path / "a.png")
    args = ["predict", str(image), "--model", str(model), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "o1")]) == 2
    err = one_line_error(capsys)
    assert "method 'kmeans'" in err and "--cluster k=N" in err
    assert main([*args, "--out", str(tmp_path / "o2"), "--cluster", "k=3"]) == 0
    assert tifffile.imread(tmp_path / "o2" / "a.tif").max() == 3


def test_predict_refuses_a_negative_halo(seeded_model, tmp_path, capsys):
    image = image_file(tmp_path / "a.png")
    args = ["predict", str(image), "--model", str(seeded_model), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "o"), "--halo", "-1"]) == 2
    assert "--halo must be >= 0, got -1" in one_line_error(capsys)
    cluster = ["--cluster", "method=threshold", "delta_v=0.5", "fg_thresh=0.0"]
    assert main([*args, "--out", str(tmp_path / "p"), "--tile", "16", "--halo", "8", *cluster]) == 0


def test_predict_new_method_drops_the_old_methods_parameters(seeded_model, tmp_path):
    image = image_file(tmp_path / "a.png")
    args = ["predict", str(image), "--model", str(seeded_model), "--no-progress"]
    # seeded's seed_thresh is not a threshold parameter: dropped, not an error
    cluster = ["--cluster", "method=threshold", "delta_v=0.5", "fg_thresh=0.0"]
    assert main([*args, "--out", str(tmp_path / "o"), *cluster]) == 0


# ----------------------------------------------------------------------- tune --grid
@pytest.fixture(scope="module")
def dots_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("dots") / "dots"
    assert main(["synth", "dot_grid", "--n", "2", "--size", "32", "32", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def threshold_model(tmp_path_factory):
    return checkpoint(
        tmp_path_factory.mktemp("thr") / "m.pt",
        ClusterConfig("threshold", {"delta_v": 0.5, "fg_thresh": 0.0}),
        heads={"embedding": 4, "seed": 1},
    )


@pytest.mark.parametrize(
    "grid, expected",
    [
        (["delta_v=0.5,abc"], "--grid delta_v: expected float, got str 'abc'"),
        (["min_size=0,2.5"], "--grid min_size: expected int, got float 2.5"),
        (["seed_thresh=0.5"], "--grid seed_thresh: unknown parameter of method 'threshold'"),
        (["delta_v=0.5,[x"], "--grid delta_v: value '[x' is not valid YAML"),
        (["delta_v"], "expected KEY=V1,V2"),
    ],
)
def test_tune_grid_values_are_type_checked(threshold_model, dots_folder, capsys, grid, expected):
    rc = main(
        ["tune", "--model", str(threshold_model), "--data", str(dots_folder), "--grid", *grid]
    )
    assert rc == 2
    assert expected in one_line_error(capsys)


def test_tune_cluster_overrides_are_checked(threshold_model, dots_folder, capsys):
    args = ["tune", "--model", str(threshold_model), "--data", str(dots_folder)]
    assert main([*args, "--cluster", "delta_v=wide"]) == 2
    assert "--cluster delta_v: expected float, got str 'wide'" in one_line_error(capsys)
    assert main([*args, "--cluster", "method=kmeans"]) == 2
    assert "--cluster k=N" in one_line_error(capsys)


def test_tune_progress_over_grid_settings(threshold_model, dots_folder, tmp_path, bars, capsys):
    args = ["tune", "--model", str(threshold_model), "--data", str(dots_folder)]
    grid = ["--grid", "delta_v=0.3,0.5,0.7", "min_size=0,4"]
    assert main([*args, *grid, "--out", str(tmp_path / "t.pt")]) == 0
    (setting,) = [b for b in bars if b.unit == "setting"]
    assert setting.total == 6 and setting.n == 6 and setting.closed
    (images,) = [b for b in bars if b.unit == "image"]
    assert images.total == 2 and images.n == 2
    # the tuned checkpoint: float values from the grid
    params = load_config_from_checkpoint(tmp_path / "t.pt").cluster.params
    assert params["delta_v"] in (0.3, 0.5, 0.7) and params["min_size"] in (0, 4)
    bars.clear()
    assert main([*args, *grid, "--no-progress"]) == 0
    assert bars == []


def load_config_from_checkpoint(path):
    from instembed.engine.config import config_from_yaml

    return config_from_yaml(ck.load_checkpoint(path)["config"])


def test_tune_thresholds_reports_progress():
    from instembed.data.synth import make_samples
    from instembed.engine.tune import tune_thresholds
    from instembed.structures import Outputs

    samples = make_samples("dot_grid", 2, size=(32, 32), seed=0)
    outputs = [
        Outputs(embedding=torch.zeros(1, 2, 32, 32), seed=torch.ones(1, 1, 32, 32)) for _ in samples
    ]
    calls = []
    tune_thresholds(
        outputs,
        samples,
        ClusterConfig("threshold", {"delta_v": 0.5}),
        grid={"delta_v": [0.3, 0.5], "min_size": [0, 2, 4]},
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(i, 6) for i in range(1, 7)]


# ----------------------------------------------------------------------- predict: block progress
def test_predict_shows_progress_over_the_blocks_of_an_image(threshold_model, tmp_path, bars):
    from instembed.engine.blockwise import n_blocks

    image = image_file(tmp_path / "a.png", size=(40, 56))
    args = ["predict", str(image), "--model", str(threshold_model)]
    assert main([*args, "--out", str(tmp_path / "o1"), "--tile", "16"]) == 0
    (blocks,) = [b for b in bars if b.unit == "block"]
    assert blocks.total == n_blocks((40, 56), 16) == 12
    assert blocks.n == 12 and blocks.closed and "a" in blocks.desc
    # a whole-image prediction: no block bar; --no-progress: no bars at all
    bars.clear()
    assert main([*args, "--out", str(tmp_path / "o2")]) == 0
    assert [b.unit for b in bars] == ["image"]
    bars.clear()
    assert main([*args, "--out", str(tmp_path / "o3"), "--tile", "16", "--no-progress"]) == 0
    assert bars == []


def test_predict_block_progress_follows_the_scaled_size(threshold_model, tmp_path, bars):
    from instembed.engine.blockwise import n_blocks

    image = image_file(tmp_path / "a.png", size=(40, 56))
    args = ["predict", str(image), "--model", str(threshold_model), "--out", str(tmp_path / "o")]
    assert main([*args, "--tile", "16", "--scale", "0.5"]) == 0
    (blocks,) = [b for b in bars if b.unit == "block"]
    assert blocks.total == n_blocks((20, 28), 16) == 4 and blocks.n == 4


# ----------------------------------------------------------------------- validation progress
@pytest.mark.parametrize("progress, n, tune", [(True, 16, False), (True, 16, True)])
def test_validation_shows_progress_over_many_images(bars, progress, n, tune):
    from instembed.data.synth import make_samples
    from instembed.engine import evaluation
    from instembed.engine.evaluation import validate

    assert n >= getattr(evaluation, "VAL_PROGRESS_MIN", 16)  # "many" images
    samples = make_samples("dot_grid", n, size=(32, 32), seed=0)
    cfg = Config()
    cfg.cluster = ClusterConfig("threshold", {"delta_v": 0.5})
    cfg.run.progress, cfg.run.val_tune = progress, tune
    torch.manual_seed(0)
    model = build_model("unet", heads={"embedding": 2}, depth=1, width=4)
    metrics = validate(model, samples, cfg, torch.device("cpu"))
    assert "AP" in metrics
    (images,) = [b for b in bars if b.unit == "image"]
    assert images.total == n and images.n == n and images.closed
    settings = [b for b in bars if b.unit == "setting"]
    if tune:
        assert len(settings) == 1 and settings[0].total == settings[0].n == 4  # delta_v grid
    else:
        assert settings == []


def test_validation_progress_off_or_few_images(bars):
    from instembed.data.synth import make_samples
    from instembed.engine.evaluation import validate

    cfg = Config()
    cfg.cluster = ClusterConfig("threshold", {"delta_v": 0.5})
    model = build_model("unet", heads={"embedding": 2}, depth=1, width=4)
    cfg.run.progress = False
    validate(model, make_samples("dot_grid", 16, size=(32, 32), seed=0), cfg, torch.device("cpu"))
    cfg.run.progress = True
    validate(model, make_samples("dot_grid", 3, size=(32, 32), seed=0), cfg, torch.device("cpu"))
    assert bars == []


# ----------------------------------------------------------------------- the dot-grid config
def test_dot_grid_config_clusters_without_ground_truth():
    cfg = load_config(DOT_GRID)
    check_cluster(cfg.cluster, require=True)  # prediction has everything it needs
    # the foreground comes from the model (the demo takes it from the ground truth)
    assert cfg.model.params["heads"].get("semantic") == 2
    assert cfg.cluster.params.get("foreground_classes") == [1]
    # embedding, loss and training as the demo's semi-conv model
    from instembed.engine.demo import demo_config

    demo = demo_config(semiconv=True, steps=cfg.run.steps)
    assert cfg.model.params["semiconv"] is True
    assert cfg.model.params["heads"]["embedding"] == demo.model.params["heads"]["embedding"]
    assert cfg.model.params["coord_scale"] == pytest.approx(demo.model.params["coord_scale"])
    assert cfg.loss.name == demo.loss.name and cfg.loss.params == demo.loss.params
    assert cfg.data.synth_params == demo.data.synth_params


def test_dot_grid_config_trains_and_predicts_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    overrides = [
        "run.steps=40", "run.val_every=0", "run.ckpt_every=0", "run.progress=false",
        "run.tensorboard=false", "data.n_train=16", "data.n_val=2",
    ]  # fmt: skip
    assert main(["train", str(DOT_GRID), *overrides, "--out", str(run), "--threads", "1"]) == 0
    assert "AP=1.0000" in capsys.readouterr().out  # validation: every dot found
    test = tmp_path / "test"
    synth = ["synth", "dot_grid", "--n", "1", "--size", "96", "96", "--seed", "777"]
    assert main([*synth, "--param", "radius=4", "--param", "spacing=14", "--out", str(test)]) == 0
    (image,) = sorted((test / "images").glob("*.png"))
    out = tmp_path / "pred"
    args = ["predict", str(image), "--model", str(run), "--out", str(out), "--no-progress"]
    assert main([*args, "--threads", "1"]) == 0
    pred = tifffile.imread(out / f"{image.stem}.tif")
    gt = np.asarray(Image.open(test / "labels" / image.name))
    assert pred.shape == gt.shape
    assert len(np.unique(pred[pred > 0])) == len(np.unique(gt[gt > 0]))  # one per dot


# ----------------------------------------------------------------------- evaluate --skip-bad
def _labels_folder(root: Path) -> tuple[Path, Path]:
    gt, pred = root / "gt", root / "pred"
    gt.mkdir()
    pred.mkdir()
    lab = np.zeros((16, 16), np.uint16)
    lab[2:6, 2:6] = 1
    lab[9:14, 8:13] = 2
    for name in ("a", "b", "c"):
        Image.fromarray(lab).save(gt / f"{name}.png")
        tifffile.imwrite(pred / f"{name}.tif", lab.astype(np.int32))
    (gt / "b.png").write_bytes(b"not a png at all")  # unreadable ground truth
    return gt, pred


def test_evaluate_skip_bad_skips_an_unreadable_label_file(tmp_path, capsys):
    gt, pred = _labels_folder(tmp_path)
    args = ["evaluate", "--gt", str(gt), "--pred", str(pred), "--metrics", "sbd,coco"]
    assert main(args) == 2
    assert "b.png" in one_line_error(capsys)
    assert main([*args, "--skip-bad", "--json", str(tmp_path / "m.json")]) == 0
    cap = capsys.readouterr()
    assert "b.png" in cap.err and "skipped" in cap.err
    import json

    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["n_images"] == 2 and summary["SBD"] == pytest.approx(1.0)
    assert set(summary["matched"]) == {"a", "c"}
    assert [s["item"] for s in summary["skipped"]] == [str(gt / "b.png")]


def test_evaluate_skip_bad_with_a_data_reader(tmp_path, capsys):
    root = tmp_path / "set"
    assert main(["synth", "dot_grid", "--n", "3", "--size", "32", "32", "--out", str(root)]) == 0
    pred = tmp_path / "pred"
    pred.mkdir()
    for lab in sorted((root / "labels").glob("*.png")):
        tifffile.imwrite(pred / f"{lab.stem}.tif", np.asarray(Image.open(lab)).astype(np.int32))
    bad = sorted((root / "labels").glob("*.png"))[1]
    bad.write_bytes(b"garbage")
    args = ["evaluate", "--gt", str(root), "--gt-format", "auto", "--pred", str(pred)]
    args += ["--metrics", "sbd"]
    assert main(args) == 2
    assert "--skip-bad" in capsys.readouterr().err  # the readers' hint names the option
    assert main([*args, "--skip-bad"]) == 0
    cap = capsys.readouterr()
    assert "2 images" in cap.out and bad.stem in cap.err
