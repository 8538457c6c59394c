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


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
