"""Shared fixtures and helpers.

Real data sets are read from ``$INSTEMBED_DATA`` (default ``../shared/data`` beside the
checkout). A test that needs one uses the ``shared_data`` fixture: outside CI a missing data set
skips with the reason; under CI (``CI=true``) it fails the run. Every test that uses the fixture
(directly or through another fixture) carries the ``data`` marker, so ``-m "not data"`` selects
the tests that run without the shared data.

Optional test dependencies (pycocotools, onnx, tensorboard, sklearn) are imported with
:func:`require`, never ``pytest.importorskip``: a missing one skips outside CI and fails the run
under CI, so a CI image that lacks one cannot pass by skipping silently.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("INSTEMBED_DATA", REPO.parent / "shared" / "data"))


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(module_name: str, reason: str | None = None) -> ModuleType:
    """Import and return ``module_name``; when it is missing, skip (with the reason) outside CI
    and fail the test under CI (``CI=true``). Use instead of ``pytest.importorskip``.

    Usable at module level (a missing module then skips / fails the whole file) and inside a
    test. Only a missing ``module_name`` (or one of its parent packages) counts as missing: an
    ImportError raised while importing an installed module propagates unchanged.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if not (module_name == missing or module_name.startswith(missing + ".")):
            raise
        msg = f"optional test dependency {module_name!r} is not installed"
        if reason:
            msg += f" ({reason})"
        if _under_ci():
            pytest.fail(msg + " -- required under CI", pytrace=False)
        pytest.skip(msg, allow_module_level=True)


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test, restored after. Tiny networks run fastest that way
    and avoid OpenMP spin-wait contention on a loaded 2-core machine (measured 9 ms vs 0.3-2.4 s
    per training step with 2 busy threads). Files of tiny-network tests opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_data():
    """Return a function ``get(name) -> Path`` for a shared data set (skip/fail when absent)."""

    def get(name: str) -> Path:
        path = data_root() / name
        if not path.is_dir():
            msg = f"shared data set {name!r} not found at {path} (set INSTEMBED_DATA)"
            if _under_ci():
                pytest.fail(msg + " -- required under CI")
            pytest.skip(msg)
        return path

    return get


# helpers of the normalisation tests (tests/data/test_normalize_*.py)
@pytest.fixture
def image_folder():
    """``make(root, image)``: ``root/images/a.tif`` (the image) and ``root/labels/a.tif`` (one
    rectangle); returns ``root``."""
    import numpy as np
    import tifffile

    from instembed.data import io

    def make(root, image):
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        tifffile.imwrite(root / "images" / "a.tif", image)
        lab = np.zeros(image.shape, np.int32)
        lab[2:6, 3:9] = 1
        io.write_labels(root / "labels" / "a.tif", lab)
        return root

    return make


@pytest.fixture
def tiny_run():
    """``make(tmp_path, reader_params)``: a run folder (``tmp_path/run``) with a tiny seeded U-Net
    whose config holds ``reader_params``."""
    import torch

    from instembed.engine import checkpoint as ck
    from instembed.engine.config import ClusterConfig, Config, config_to_yaml
    from instembed.models import build_model

    def make(tmp_path, reader_params):
        heads = {"embedding": 2, "sigma": 2, "seed": 1}
        cfg = Config()
        cfg.model.name, cfg.loss.name = "unet", "spatial"
        cfg.model.params = {"heads": heads, "depth": 2, "width": 4, "semiconv": True}
        cfg.cluster = ClusterConfig("seeded", {"seed_thresh": 0.6, "min_size": 4})
        cfg.data.reader_params = dict(reader_params)
        torch.manual_seed(3)
        m = build_model("unet", heads=heads, depth=2, width=4, semiconv=True)
        run = tmp_path / "run"
        run.mkdir()
        ck.save_checkpoint(
            run / "best.pt", model_state=m.state_dict(), config_yaml=config_to_yaml(cfg), step=0
        )
        return run

    return make


def two_object_scene():
    """(Outputs, Sample) of a hand-made seeded-clustering scene: two square objects whose
    embeddings sit at (0, 0) and (4, 0); object A's seed score is 0.95, object B's only 0.65, so
    a seed threshold of 0.7 misses B and 0.6 finds it (used by the tuning tests)."""
    import numpy as np
    import torch

    from instembed.data.sample import Sample
    from instembed.structures import Outputs

    h, w = 16, 20
    gt = np.zeros((h, w), np.int32)
    gt[2:8, 2:8] = 1
    gt[9:15, 11:17] = 2
    emb = torch.zeros(2, h, w)
    emb[0][torch.from_numpy(gt == 2)] = 4.0
    seed = torch.zeros(h, w)
    seed[torch.from_numpy(gt == 1)] = 0.95
    seed[torch.from_numpy(gt == 2)] = 0.65
    out = Outputs(embedding=emb[None], seed=seed[None, None], sigma=torch.ones(1, 1, h, w))
    return out, Sample(image=np.zeros((1, h, w), np.float32), instances=gt)


def pytest_collection_modifyitems(config, items):
    """Mark every test that reads the shared data (uses ``shared_data``, also through another
    fixture) with ``data``."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)
