"""Export parity: the exported files compute what the Python pipeline computes."""

import numpy as np
import pytest
import torch

from conftest import require
from instembed.engine import checkpoint as ck
from instembed.engine.config import ClusterConfig, Config, config_to_yaml
from instembed.engine.export import export_onnx, export_torchscript
from instembed.engine.predict import instances_from_outputs
from instembed.metrics import adjusted_rand_index
from instembed.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(heads, seed=0, **bias):
    torch.manual_seed(seed)
    m = build_model("unet", heads=heads, semiconv="embedding" in heads, depth=2, width=4).eval()
    return m


def test_torchscript_network_any_size_and_config(tmp_path):
    m = _model({"embedding": 4, "seed": 1})
    cfg = Config()
    cfg.cluster = ClusterConfig("threshold", {"delta_v": 0.5})
    path = export_torchscript(m, cfg, tmp_path / "m.ts")
    extra = {"config.yaml": ""}
    ts = torch.jit.load(str(path), _extra_files=extra)
    assert b"threshold" in extra["config.yaml"] and not ts.has_postprocessing
    for hw in [(64, 64), (50, 70)]:  # 50 x 70 is not a multiple of the divisor (4): padded
        x = torch.rand(2, 1, *hw)
        out, ref = ts(x), m(x)
        for name in ("embedding", "seed"):
            torch.testing.assert_close(out[name], getattr(ref, name), atol=1e-5, rtol=1e-5)


def _same_instances(labels, scores, pred):
    assert int(labels.max()) == int(pred.labels.max()) > 0
    assert adjusted_rand_index(pred.labels, labels.numpy()) == pytest.approx(1.0)
    assert np.allclose(np.sort(scores.numpy()), np.sort(pred.scores), atol=1e-6)


def test_torchscript_with_seeded_clustering_matches_pipeline(tmp_path):
    m = _model({"embedding": 2, "sigma": 2, "seed": 1}, seed=3)
    with torch.no_grad():  # a seed map above the thresholds, so the random net finds instances
        m.decoders[0].head.bias[-1] = 2.0
    cfg = Config()
    cfg.cluster = ClusterConfig("seeded", {"seed_thresh": 0.6, "min_size": 4, "score": "seed"})
    ts = torch.jit.load(str(export_torchscript(m, cfg, tmp_path / "s.ts")))
    assert ts.has_postprocessing
    x = torch.rand(1, 1, 60, 52)
    with torch.no_grad():
        labels, scores = ts.segment(x)
    with torch.no_grad():
        pred = instances_from_outputs(m(x), cfg.cluster)
    _same_instances(labels, scores, pred)


def test_torchscript_with_center_offset_matches_pipeline(tmp_path):
    m = _model({"center": 1, "offset": 2}, seed=4)
    cfg = Config()
    cfg.cluster = ClusterConfig("center_offset", {"threshold": -10.0, "nms_kernel": 5, "top_k": 20})
    ts = torch.jit.load(str(export_torchscript(m, cfg, tmp_path / "c.ts")))
    assert ts.has_postprocessing
    x = torch.rand(1, 1, 48, 56)
    with torch.no_grad():
        labels, scores = ts.segment(x)
    with torch.no_grad():
        pred = instances_from_outputs(m(x), cfg.cluster)
    _same_instances(labels, scores, pred)


def test_onnx_network_parity_with_reference_runtime(tmp_path):
    onnx = require("onnx")
    from onnx.reference import ReferenceEvaluator

    m = _model({"embedding": 3, "seed": 1, "offset": 2})
    path = export_onnx(m, Config(), tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["size_divisor"] == "4" and meta["outputs"] == "embedding,seed,offset"
    sess = ReferenceEvaluator(proto)
    for shape in [(1, 1, 64, 64), (2, 1, 40, 36)]:  # dynamic batch and size
        x = torch.rand(*shape)
        outs = sess.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = m(x)
        for name, got in zip(meta["outputs"].split(","), outs):
            np.testing.assert_allclose(got, getattr(ref, name).numpy(), atol=1e-5, rtol=1e-5)
    assert not m.training  # exporting leaves the model in eval mode


def test_export_cli(tmp_path, capsys):
    from instembed.cli import main

    cfg = Config()
    cfg.model.params = {"heads": {"embedding": 4}, "depth": 2, "width": 4}
    m = build_model("unet", heads={"embedding": 4}, depth=2, width=4)
    ckpt = ck.save_checkpoint(
        tmp_path / "m.pt", model_state=m.state_dict(), config_yaml=config_to_yaml(cfg), step=0
    )
    assert (
        main(
            [
                "export",
                "--model",
                str(ckpt),
                "--format",
                "torchscript",
                "--out",
                str(tmp_path / "m.ts"),
            ]
        )
        == 0
    )
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(
        torch.jit.load(str(tmp_path / "m.ts"))(x)["embedding"], m.eval()(x).embedding
    )


def test_the_exporter_comes_from_the_method_table():
    from instembed.cluster.methods import exportable_methods
    from instembed.engine.export import (
        CenterOffsetExport,
        ScriptedNet,
        SeededExport,
        postprocessing_wrapper,
    )

    net, seeded = torch.nn.Identity(), ["embedding", "seed", "sigma"]
    w = postprocessing_wrapper(net, seeded, 4, "seeded", {"seed_thresh": 0.6})
    assert isinstance(w, SeededExport) and w.has_postprocessing and w.seed_thresh == 0.6
    w = postprocessing_wrapper(net, ["center", "offset"], 4, "center_offset", {})
    assert isinstance(w, CenterOffsetExport)
    w = postprocessing_wrapper(net, ["embedding"], 4, "threshold", {})  # network only
    assert type(w) is ScriptedNet and not w.has_postprocessing
    assert set(exportable_methods()) == {"seeded", "center_offset"}
    with pytest.raises(ValueError, match="methods with one: \\['seeded', 'center_offset'\\]"):
        postprocessing_wrapper(net, ["embedding"], 4, "threshold", {}, postprocessing=True)
    with pytest.raises(ValueError, match="needs the network outputs \\['sigma'\\]"):
        postprocessing_wrapper(net, ["embedding", "seed"], 4, "seeded", {}, postprocessing=True)
    w = postprocessing_wrapper(net, seeded, 4, "seeded", {}, postprocessing=False)
    assert type(w) is ScriptedNet


# --------------------------------------------------------------------------- export = predict
STARDIST_IMAGE = "stardist/data/images/img2d.tif"


def _exported(tmp_path, model, cfg, name="m.ts"):
    return torch.jit.load(str(export_torchscript(model, cfg, tmp_path / name)))


def _assert_same_as_predict(ts, model, cfg, image):
    """The exported file's labels and scores are the Predictor's, array for array."""
    from instembed.engine.predict import Predictor

    pred = Predictor(model, cfg)(image)
    with torch.no_grad():
        labels, scores = ts.segment(torch.from_numpy(image)[None])
    n = int(pred.labels.max())
    assert n > 10 and int(labels.max()) == n == scores.shape[0]
    assert len(np.unique(labels.numpy())) - 1 == n  # ids 1..n, as in predict
    np.testing.assert_array_equal(labels.numpy(), pred.labels)
    np.testing.assert_allclose(scores.numpy(), pred.scores, rtol=0, atol=1e-6)
    return n


def _real_image(path, cfg):
    from instembed.data.io import load_image

    normalize = cfg.data.reader_params.get("normalize", "percentile")
    return load_image(path, normalize, channels=cfg.model.in_channels)[0]


def test_exported_dsb2018_equals_predict_on_the_stardist_image(tmp_path, shared_data):
    from instembed.engine.predict import load_model

    model, cfg = load_model("dsb2018-nuclei")
    image = _real_image(shared_data("stardist_example") / STARDIST_IMAGE, cfg)
    ts = _exported(tmp_path, model, cfg)
    assert ts.has_postprocessing and ts.min_size == cfg.cluster.params["min_size"]
    _assert_same_as_predict(ts, model, cfg, image)


def test_exported_bbbc039_equals_predict_on_a_real_image(tmp_path, shared_data):
    from instembed.engine.predict import load_model

    model, cfg = load_model("bbbc039-nuclei")
    folder = shared_data("bbbc039") / "cell nuclei" / "images"
    image = _real_image(sorted(folder.glob("*.tif"))[0], cfg)
    _assert_same_as_predict(_exported(tmp_path, model, cfg), model, cfg, image)


def test_exported_min_size_on_a_real_crop(tmp_path, shared_data):
    """A coarse seed-loop sample (``max_points``) lets a fragment under ``min_size`` through
    the clusterer; predict removes it, and so must the exported file (the old one kept it).
    The crop and sample size are ones where the shipped model (version 5) shows it."""
    from instembed.cluster.seeded import seeded_cluster
    from instembed.engine.predict import load_model

    model, cfg = load_model("bbbc039-nuclei")
    folder = shared_data("bbbc039") / "cell nuclei" / "images"
    image = _real_image(sorted(folder.glob("*.tif"))[0], cfg)[:, 256:512, 256:512].copy()
    params = dict(cfg.cluster.params) | {"max_points": 2048, "min_size": 32}
    cfg.cluster = ClusterConfig("seeded", params)
    n = _assert_same_as_predict(_exported(tmp_path, model, cfg), model, cfg, image)
    with torch.no_grad():
        out = model(torch.from_numpy(image)[None])
    raw, _, _ = seeded_cluster(out.embedding[0], out.seed[0, 0], out.sigma[0], None, **params)
    assert int(raw.max()) > n  # what the clusterer alone (the old export) returned


class _Maps(torch.nn.Module):
    """A stand-in network returning fixed output maps (cropped to the input size)."""

    def __init__(self, maps):
        super().__init__()
        self.embedding, self.sigma, self.seed = maps

    def forward(self, x):
        h, w = x.shape[-2], x.shape[-1]
        return (
            self.embedding[..., :h, :w],
            self.sigma[..., :h, :w],
            self.seed[..., :h, :w],
        )


def _two_objects():
    """A 400-pixel object and an 8-pixel one; with ``max_points=16`` the seed loop counts each
    grid point as 36 pixels, so the small object passes the loop's ``min_size`` of 20."""
    emb = torch.zeros(1, 2, 32, 32)
    seed = torch.zeros(1, 1, 32, 32)
    seed[..., :20, :20] = 0.95
    seed[..., 24:26, 24:28] = 0.9
    emb[:, :, 24:26, 24:28] = 10.0
    return emb, torch.full((1, 1, 32, 32), 0.5), seed


def test_exported_min_size_removes_what_predict_removes():
    from instembed.cluster import cluster_embeddings
    from instembed.cluster.seeded import seeded_cluster
    from instembed.engine.export import postprocessing_wrapper
    from instembed.structures import Outputs

    emb, sigma, seed = _two_objects()
    params = {"min_size": 20, "max_points": 16, "seed_thresh": 0.5, "score": "product"}
    # the clusterer alone keeps the 8-pixel object (what the old export returned)
    own = {k: v for k, v in params.items() if k != "score"}
    raw, _, _ = seeded_cluster(emb[0], seed[0, 0], sigma[0], None, **own)
    assert int(raw.max()) == 2 and int((raw == 2).sum()) == 8
    net = torch.jit.script(_Maps((emb, sigma, seed)))
    names = ["embedding", "sigma", "seed"]
    ts = torch.jit.script(postprocessing_wrapper(net, names, 4, "seeded", params, in_channels=1))
    labels, scores = ts.segment(torch.rand(1, 1, 32, 32))
    ref = cluster_embeddings(Outputs(embedding=emb, sigma=sigma, seed=seed), "seeded", **params)
    assert int(labels.max()) == ref.num_instances == 1
    assert torch.equal(labels, ref.labels)
    torch.testing.assert_close(scores, ref.scores)
    labels, scores, masks = ts.segment_masks(torch.rand(1, 1, 32, 32))
    assert masks.shape == (1, 32, 32) and torch.equal(masks[0], labels == 1)


@pytest.mark.parametrize("score", ["seed", "foreground", "product", "constant"])
def test_torchscript_seeded_score_modes_and_thresholds(tmp_path, score):
    m = _model({"embedding": 2, "sigma": 2, "seed": 1}, seed=3)
    with torch.no_grad():
        m.decoders[0].head.bias[-1] = 2.0
    cfg = Config()
    cfg.cluster = ClusterConfig(
        "seeded",
        {"seed_thresh": 0.6, "fg_thresh": 0.55, "min_size": 6, "prob_thresh": 0.4, "score": score},
    )
    ts = _exported(tmp_path, m, cfg)
    x = torch.rand(1, 1, 60, 52)
    with torch.no_grad():
        labels, scores = ts.segment(x)
        pred = instances_from_outputs(m(x), cfg.cluster)
    assert int(labels.max()) == int(pred.labels.max()) > 0
    np.testing.assert_array_equal(labels.numpy(), pred.labels)
    np.testing.assert_allclose(scores.numpy(), pred.scores, atol=1e-6)


def test_torchscript_center_offset_post_processing_matches_pipeline(tmp_path):
    # a seed head is the foreground probability of the scores, not the grouping's foreground
    m = _model({"center": 1, "offset": 2, "seed": 1}, seed=4)
    cfg = Config()
    params = {"threshold": -10.0, "nms_kernel": 5, "top_k": 20, "min_size": 40, "score": "product"}
    cfg.cluster = ClusterConfig("center_offset", params)
    ts = _exported(tmp_path, m, cfg)
    x = torch.rand(1, 1, 48, 56)
    with torch.no_grad():
        labels, scores = ts.segment(x)
        pred = instances_from_outputs(m(x), cfg.cluster)
        raw = instances_from_outputs(m(x), ClusterConfig("center_offset", params | {"min_size": 0}))
    assert 0 < int(pred.labels.max()) < int(raw.labels.max())  # min_size removed some
    np.testing.assert_array_equal(labels.numpy(), pred.labels)
    np.testing.assert_allclose(scores.numpy(), pred.scores, atol=1e-6)


def test_worms_overlapping_masks_are_exported(tmp_path):
    m = _model({"embedding": 2, "sigma": 2, "seed": 1}, seed=3)
    with torch.no_grad():
        m.decoders[0].head.bias[-1] = 2.0
    cfg = Config()
    cfg.cluster = ClusterConfig(
        "seeded", {"seed_thresh": 0.6, "min_size": 4, "overlap_thresh": 0.3}
    )
    ts = _exported(tmp_path, m, cfg)
    assert ts.has_masks
    x = torch.rand(1, 1, 40, 44)
    with torch.no_grad():
        labels, scores, masks = ts.segment_masks(x)
        pred = instances_from_outputs(m(x), cfg.cluster)
    assert pred.masks is not None and pred.masks.shape[0] > 0
    np.testing.assert_array_equal(labels.numpy(), pred.labels)
    np.testing.assert_array_equal(masks.numpy(), pred.masks)


@pytest.mark.parametrize(
    ("method", "params", "match"),
    [
        ("seeded", {"fill_holes": True}, "fill_holes=True cannot be compiled"),
        ("seeded", {"radius": 3}, "unknown parameter\\(s\\) \\['radius'\\]"),
        ("seeded", {"score": "best"}, "score must be one of"),
        ("seeded", {"prob_thresh": 1.5}, "prob_thresh must be in"),
        ("seeded", {"foreground_classes": [1]}, "foreground_classes needs a model with a semantic"),
        ("center_offset", {"overlap_thresh": 0.5}, "overlap_thresh"),
        ("center_offset", {"nms_kernel": 4}, "nms_kernel"),
    ],
)
def test_export_refuses_what_it_cannot_export(tmp_path, method, params, match):
    heads = (
        {"embedding": 2, "sigma": 2, "seed": 1}
        if method == "seeded"
        else {"center": 1, "offset": 2}
    )
    cfg = Config()
    cfg.cluster = ClusterConfig(method, params)
    with pytest.raises(ValueError, match=match):
        export_torchscript(_model(heads), cfg, tmp_path / "m.ts")
    # the network alone is still exportable
    export_torchscript(_model(heads), cfg, tmp_path / "m.ts", postprocessing=False)


def test_exported_module_checks_its_input(tmp_path):
    cfg = Config()
    cfg.cluster = ClusterConfig("seeded", {"min_size": 4})
    ts = _exported(tmp_path, _model({"embedding": 2, "sigma": 2, "seed": 1}), cfg)
    cases = [
        (torch.rand(1, 32, 32), "4 dimensions \\(B, C, H, W\\), got 3 dimension"),
        (torch.rand(1, 2, 32, 32), "expected 1 channel\\(s\\) \\(B, 1, H, W\\), got 2"),
        (torch.zeros(1, 1, 32, 32, dtype=torch.uint8), "floating-point image .* got torch.uint8"),
        (torch.zeros(1, 1, 32, 32, dtype=torch.int64), "got torch.int64"),
    ]
    for x, match in cases:
        for call in (ts, ts.segment):
            with pytest.raises(Exception, match=match):
                call(x)
    with pytest.raises(
        Exception, match="segment takes one image \\(1, C, H, W\\), got a batch of 2"
    ):
        ts.segment(torch.rand(2, 1, 32, 32))
    # float64 (and float16) images are converted to float32, as the Predictor does
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(ts.segment(x.double())[0], ts.segment(x)[0])


def test_engine_params_are_the_engines():
    from instembed.cluster.torchscript import ENGINE_PARAMS
    from instembed.engine.build import ENGINE_CLUSTER_PARAMS

    assert tuple(ENGINE_PARAMS) == tuple(ENGINE_CLUSTER_PARAMS)


def test_export_cli_refuses_fill_holes_and_exports_the_network_only(tmp_path, capsys):
    from instembed.cli import main

    heads = {"embedding": 2, "sigma": 2, "seed": 1}
    cfg = Config()
    cfg.model.params = {"heads": heads, "depth": 2, "width": 4}
    cfg.cluster = ClusterConfig("seeded", {"fill_holes": True})
    m = build_model("unet", heads=heads, depth=2, width=4)
    ckpt = ck.save_checkpoint(
        tmp_path / "m.pt", model_state=m.state_dict(), config_yaml=config_to_yaml(cfg), step=0
    )
    args = ["export", "--model", str(ckpt), "--format", "torchscript", "--out"]
    assert main([*args, str(tmp_path / "a.ts")]) == 2
    assert "fill_holes=True cannot be compiled" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "b.ts"), "--network-only"]) == 0
    assert not torch.jit.load(str(tmp_path / "b.ts")).has_postprocessing
