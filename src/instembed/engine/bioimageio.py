"""BioImage Model Zoo (bioimage.io) packages: a model as a zip of the model description format
0.5 (``rdf.yaml``) that bioimage.io consumers (deepImageJ / Fiji, QuPath, ilastik,
``bioimageio.core``) run without instembed.

The package holds TorchScript weights (``weights_torchscript.pt``) that take the **raw** image
and return the **label image** (0 = background, instances 1..N): the model's own input
normalisation, the network and the clustering are all compiled in, as InstanSeg ships its
models (Goldsborough et al. 2024). Why the normalisation is baked in rather than described as
``preprocessing`` in ``rdf.yaml``: the instembed normalisations are not all expressible there
(``percentile_darkbg`` inverts images with a bright background), and each consumer computes
percentiles with its own code (bioimageio.core's ``scale_range`` adds ``eps`` to the range),
whose floats need not match NumPy's to the last bit -- enough to move a pixel across a
clustering threshold.
Compiled in, the normalisation is the one :func:`instembed.data.normalize.normalize_image`
computes, bit for bit (the same percentile interpolation and float32 / float64 steps), so the
package's labels equal :func:`instembed.segment`'s on the same image.

Files of a package (all referenced from ``rdf.yaml`` with their sha256):

=========================  ==============================================================
``rdf.yaml``               the description (format_version 0.5.x)
``weights_torchscript.pt`` :class:`BioimageioModule`: raw (B, C, Y, X) -> labels (B, 1, Y, X)
``test_input.npy``         a test image (B=1) -- its labels are ``test_output.npy``
``test_output.npy``        int32 labels of ``test_input.npy``
``cover.png``              the test image beside its labels (2:1)
``README.md``              documentation, with a Validation section
``LICENSE.txt``            the licence text (BSD-3-Clause, as instembed)
``instembed_config.yaml``  the run config the model was trained with
=========================  ==============================================================

Writing a package needs only NumPy, PyYAML, Pillow and zipfile; :func:`test_package` runs
``bioimageio.core``'s own model test (an optional dependency, imported when called).

The clustering is part of the model, so the whole image must be given at once: a consumer
that tiles the image would cut instances at the tile borders and normalise each tile on its
own. The input axes therefore accept any size (``min`` the network's size divisor, step 1):
the module pads internally as ``instembed predict`` does.

Method papers cited as fits the model: spatial embeddings / seeded clustering (Neven et al.
2019), semi-convolutional embeddings (Novotny et al. 2018), the discriminative loss (De
Brabandere et al. 2017), center/offset grouping (Cheng et al. 2020, Panoptic-DeepLab), and the
U-Net (Ronneberger et al. 2015) and the training data when known.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from instembed.data.normalize import model_normalization
from instembed.engine.bioimageio_module import BioimageioModule, Normalize, bioimageio_module

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "BioimageioModule",
    "Normalize",
    "bioimageio_module",
    "citations",
    "export_bioimageio",
    "test_package",
]

FORMAT_VERSION = "0.5.12"
"""The model description format written: the latest of bioimageio.spec 0.5.12 (the version
bioimageio.core 0.11 pins), as the spec asks of new models."""

INPUT_ID, OUTPUT_ID = "raw", "labels"
WEIGHTS, TEST_IN, TEST_OUT = "weights_torchscript.pt", "test_input.npy", "test_output.npy"
SAMPLE_IN, SAMPLE_OUT = "sample_input.tif", "sample_output.tif"


# --------------------------------------------------------------------------- citations
_PAPERS = {
    "neven": (
        "Neven D., De Brabandere B., Proesmans M., Van Gool L. Instance Segmentation by Jointly "
        "Optimizing Spatial Embeddings and Clustering Bandwidth. CVPR 2019 (arXiv:1906.11109).",
        "10.48550/arXiv.1906.11109",
    ),
    "novotny": (
        "Novotny D., Albanie S., Larlus D., Vedaldi A. Semi-convolutional Operators for "
        "Instance Segmentation. ECCV 2018 (arXiv:1807.10712).",
        "10.48550/arXiv.1807.10712",
    ),
    "debrabandere": (
        "De Brabandere B., Neven D., Van Gool L. Semantic Instance Segmentation with a "
        "Discriminative Loss Function. CVPR Workshops 2017 (arXiv:1708.02551).",
        "10.48550/arXiv.1708.02551",
    ),
    "cheng": (
        "Cheng B., Collins M. D., Zhu Y., Liu T., Huang T. S., Adam H., Chen L.-C. "
        "Panoptic-DeepLab: A Simple, Strong, and Fast Baseline for Bottom-Up Panoptic "
        "Segmentation. CVPR 2020 (arXiv:1911.10194).",
        "10.48550/arXiv.1911.10194",
    ),
    "fathi": (
        "Fathi A., Wojna Z., Rathod V., Wang P., Song H. O., Guadarrama S., Murphy K. P. "
        "Semantic Instance Segmentation via Deep Metric Learning. arXiv:1703.10277 (2017).",
        "10.48550/arXiv.1703.10277",
    ),
    "unet": (
        "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical "
        "Image Segmentation. MICCAI 2015.",
        "10.1007/978-3-319-24574-4_28",
    ),
    "caicedo": (
        "Caicedo J. C. et al. Nucleus segmentation across imaging experiments: the 2018 Data "
        "Science Bowl. Nature Methods 16, 1247-1253 (2019). (BBBC038 / DSB2018 data)",
        "10.1038/s41592-019-0612-7",
    ),
    "caicedo_bbbc039": (
        "Caicedo J. C., Roth J., Goodman A., et al. Evaluation of Deep Learning Strategies for "
        "Nucleus Segmentation in Fluorescence Images. Cytometry A 95, 952-965 (2019). (BBBC039 "
        "data)",
        "10.1002/cyto.a.23863",
    ),
    "ljosa": (
        "Ljosa V., Sokolnicki K. L., Carpenter A. E. Annotated high-throughput microscopy image "
        "sets for validation. Nature Methods 9, 637 (2012). (BBBC010 data)",
        "10.1038/nmeth.2083",
    ),
}

_DATA = {  # dataset -> (citation key, modality tags, content tag, words for the README)
    "bbbc039": ("caicedo_bbbc039", ["fluorescence-light-microscopy"], "nuclei", "U2OS nuclei"),
    "dsb2018": (
        "caicedo",
        ["fluorescence-light-microscopy", "transmission-light-microscopy"],
        "nuclei",
        "nuclei across imaging types",
    ),
    "bbbc010": ("ljosa", ["transmission-light-microscopy"], "whole-organism", "C. elegans"),
}


def citations(cfg, dataset: str | None = None) -> list[dict]:
    """The ``cite`` entries (text + DOI) for the method of ``cfg`` -- its losses, clustering,
    semi-convolutional coordinates and network -- and for its training data when known."""
    losses = {str(cfg.loss.name)} | {str(e.get("name")) for e in (cfg.loss.extra or [])}
    method = str(cfg.cluster.method)
    semiconv = bool(cfg.model.params.get("semiconv", False))
    keys = []
    if "spatial" in losses or method == "seeded":
        keys.append("neven")
    if semiconv or losses & {"semiconv", "bilateral"}:
        keys.append("novotny")
    if "discriminative" in losses:
        keys.append("debrabandere")
    if "metric" in losses:
        keys.append("fathi")
    if method == "center_offset" or "center_offset" in losses:
        keys.append("cheng")
    if str(cfg.model.name) == "unet":
        keys.append("unet")
    if dataset in _DATA:
        keys.append(_DATA[dataset][0])
    return [{"text": _PAPERS[k][0], "doi": _PAPERS[k][1]} for k in keys]


# --------------------------------------------------------------------------- package parts
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _test_image(test_image, channel: int | None, in_channels: int, kind: str) -> np.ndarray:
    """Raw (C, H, W) pixels of the test image: a file, an array, or (None) a synthetic scene
    of ``kind`` (:func:`instembed.data.synth.make_samples`, 256 x 256, as 16-bit pixels)."""
    from instembed.data.normalize import to_chw

    where = "test image"
    if test_image is None:
        from instembed.data.synth import make_samples

        img = make_samples(kind, 1, (256, 256), seed=0)[0].image
        raw = np.round(np.clip(np.asarray(img, np.float64), 0, None) * 4000 + 200)
        chw = raw.astype(np.uint16).reshape(-1, *raw.shape[-2:])[:1]
    else:
        if isinstance(test_image, (str, Path)):
            from instembed.data.io import read_image

            where = f"test image {test_image}"
            arr = read_image(test_image)
        else:
            arr = np.asarray(test_image)
        chw = to_chw(arr, path=where)
    if channel is not None:
        if not 0 <= channel < chw.shape[0]:
            raise ValueError(
                f"{where}: channel {channel} asked for, but the image has {chw.shape[0]} channel(s)"
            )
        chw = chw[channel : channel + 1]
    if chw.shape[0] != in_channels:
        raise ValueError(
            f"{where}: expected {in_channels} channel(s) for this model, got an image of "
            f"{chw.shape[0]} channel(s) (shape {tuple(chw.shape)}); pick one with channel=C "
            "(--test-channel C) or convert it"
        )
    if chw.dtype.kind not in "uif":
        raise ValueError(f"{where}: expected integer or float pixels, got dtype {chw.dtype}")
    return chw


def _tif(arr: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, compression="zlib")
    return buf.getvalue()


def _cover(raw: np.ndarray, labels: np.ndarray, side: int = 256) -> bytes:
    """PNG bytes: the image (contrast-stretched) beside its labels overlaid, each a centred
    square crop resized to ``side`` -- the 2:1 cover bioimage.io asks for."""
    from PIL import Image

    from instembed.engine.writers import overlay_rgb

    h, w = labels.shape
    m = min(h, w)
    y0, x0 = (h - m) // 2, (w - m) // 2
    img = np.asarray(raw, np.float32)[:, y0 : y0 + m, x0 : x0 + m]
    lab = labels[y0 : y0 + m, x0 : x0 + m]
    left = overlay_rgb(img, np.zeros_like(lab))
    right = overlay_rgb(img, lab)
    pair = [Image.fromarray(p).resize((side, side), Image.NEAREST) for p in (left, right)]
    canvas = Image.new("RGB", (2 * side, side))
    canvas.paste(pair[0], (0, 0))
    canvas.paste(pair[1], (side, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


_BSD3 = """BSD 3-Clause License

Copyright (c) {year}, the instembed developers
All rights reserved.

Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of
   conditions and the following disclaimer.
2. Redistributions in binary form must reproduce the above copyright notice, this list of
   conditions and the following disclaimer in the documentation and/or other materials
   provided with the distribution.
3. Neither the name of the copyright holder nor the names of its contributors may be used to
   endorse or promote products derived from this software without specific prior written
   permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY,
WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY
WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


def _readme(facts: dict) -> str:
    """README.md of a package: what the model does, how to run it, validation, citations."""
    f = facts
    lines = [
        f"# {f['title']}",
        "",
        f"{f['description']}",
        "",
        "## Input and output",
        "",
        f"- input `{INPUT_ID}`: raw image(s) `(batch, channel={f['in_channels']}, y, x)`, "
        f"{f['input_dtype']}, any size from {f['min_size']} px a side. The model applies its own "
        f"normalisation (`{f['normalize']}`: {f['normalize_words']}), each image on its own, "
        "so no preprocessing is needed or wanted.",
        f"- output `{OUTPUT_ID}`: int32 label image `(batch, 1, y, x)`, 0 = background, "
        "instances numbered 1..N.",
        "- give the whole image at once: the clustering is part of the model, so tiles would "
        "cut instances at their borders and be normalised on their own.",
    ]
    if f["overlap"]:
        lines.append(
            "- this model's instances may overlap: instembed returns one mask per instance; "
            "the label image here paints them, the higher-scoring instance on top (the "
            "`labels` of `instembed.segment`)."
        )
    lines += [
        "",
        "## How it was made",
        "",
        f"Exported by instembed {f['version']} from `{f['source']}`: "
        f"`instembed export --format bioimageio --model {f['source']} --out PACKAGE.zip`. "
        f"Network `{f['network']}` ({f['n_params']:,} parameters), loss `{f['loss']}`, "
        f"clustering `{f['method']}` with {f['cluster_params']}. The TorchScript file computes "
        "the labels `instembed.segment(image, model)` returns for the same image (same "
        "normalisation, network and clustering; tested in instembed's test suite).",
        "",
        "## Validation",
        "",
    ]
    if f["metrics"]:
        lines += [
            f"Metrics on the validation split of {f['dataset']} (whole images, instembed's "
            "metrics; AP_dsb@0.5 = TP / (TP + FP + FN) at IoU 0.5):",
            "",
            "| " + " | ".join(f["metrics"]) + " |",
            "|" + "---|" * len(f["metrics"]),
            "| " + " | ".join(f"{v:.3f}" for v in f["metrics"].values()) + " |",
            "",
        ]
    lines += [
        "To validate on your own data: run the model on images with ground-truth labels and "
        "score the predictions, e.g. `instembed evaluate` with the same model name, or any "
        "instance-matching metric (average precision at IoU 0.5).",
        "The test image of this package (`test_input.npy`) gives `test_output.npy` "
        "exactly (`bioimageio test` reproduces it with zero tolerance).",
        "",
        "## Limitations",
        "",
        "Trained on " + (f["data_words"] or "the data of its run config") + "; other "
        "modalities, magnifications or object sizes may need retraining or rescaling the "
        "image. Images are segmented whole (instembed itself segments images over 1024 px "
        "a side block by block; this package does not).",
        "",
        "## Citations",
        "",
    ]
    lines += [f"- {c['text']} doi:{c['doi']}" for c in f["cite"]]
    lines += ["", f"## Licence\n\n{f['license']} (see LICENSE.txt).", ""]
    return "\n".join(lines)


_NORM_WORDS = {
    "percentile": "per-channel 1st / 99.8th percentiles mapped to 0 / 1",
    "percentile_darkbg": "per-channel 1st / 99.8th percentiles mapped to 0 / 1, then "
    "inverted when the background is bright (median > 0.5) so that objects are bright",
    "percentile_unsaturated": "per-channel 1st / 99.8th percentiles mapped to 0 / 1, the "
    "99.8th taken below the maximum when it falls on a saturation plateau",
    "range": "integers divided by their dtype's maximum",
    "none": "none (the pixels as given, as float32)",
}


def _safe_name(text: str) -> str:
    import re

    name = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", text).strip() or "model"
    return f"instembed {name}"[:64]


def _model_card(spec) -> dict:
    """The JSON card of a shipped model (``{}`` for a checkpoint or run folder)."""
    import json

    from instembed.engine.predict import PRETRAINED_DIR

    card = PRETRAINED_DIR / f"{spec}.json"
    if isinstance(spec, str) and not Path(spec).exists() and card.is_file():
        return json.loads(card.read_text())
    return {}


def export_bioimageio(
    model: str | Path,
    out: str | Path,
    *,
    test_image=None,
    channel: int | None = None,
    name: str | None = None,
    authors: list[str] | None = None,
) -> Path:
    """Write the bioimage.io package (a zip, see the module docstring) of ``model`` -- a shipped
    model name, a checkpoint ``.pt`` or a run folder -- to ``out``; returns its path.

    ``test_image``: the image whose labels the package carries as its test (a path or an array
    of raw pixels; ``channel`` picks one channel of a multi-channel image); default: a synthetic
    256 x 256 scene (touching cells, or worms for a model with overlapping instances).
    Raises ValueError for a model the package cannot hold (clustering without a TorchScript
    exporter, a model returning instances itself) or a test image of the wrong channel count.
    """
    import yaml

    from instembed import __version__
    from instembed.engine.config import config_to_yaml
    from instembed.engine.inference import model_facts
    from instembed.engine.predict import load_model

    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"bioimage.io export: --out must name a .zip file, got {str(out)!r}")
    net, cfg = load_model(model, "cpu")
    card = _model_card(model)
    mode, min_range = model_normalization(cfg.data.reader_params)
    min_range = min_range if mode.startswith("percentile") else 0.0  # no effect otherwise
    params = dict(cfg.cluster.params)
    overlap = params.get("overlap_thresh") is not None
    in_channels = int(getattr(net, "in_channels", cfg.model.in_channels))
    raw = _test_image(test_image, channel, in_channels, "worms" if overlap else "touching_cells")
    with tempfile.TemporaryDirectory() as tmp:
        scripted = bioimageio_module(net, cfg, mode, Path(tmp), min_range)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf, _extra_files={"config.yaml": config_to_yaml(cfg)})
    weights = buf.getvalue()
    module = torch.jit.load(io.BytesIO(weights), map_location="cpu")
    in_dtype = raw.dtype.name if mode == "range" and raw.dtype.kind in "ui" else "float32"
    x = np.ascontiguousarray(raw[None].astype(in_dtype))
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    log.info("bioimage.io test image %s: %d instance(s)", tuple(x.shape), int(y.max()))
    if int(y.max()) == 0:
        log.warning("bioimage.io export: the model finds no instance in the test image")

    dataset = card.get("dataset") or (
        f"synthetic {cfg.data.synth}"
        if cfg.data.synth
        else (None if cfg.data.format in (None, "", "auto") else str(cfg.data.format))
    )
    data = _DATA.get(dataset or "")
    f = {
        "title": _safe_name(name or (str(model) if card else Path(model).resolve().name)),
        "description": (
            f"Instance segmentation by pixel embeddings ({cfg.loss.name} loss, "
            f"{cfg.cluster.method} clustering) of {data[3] if data else 'objects'}: raw image "
            "in, label image out (normalisation, network and clustering in one TorchScript file)."
        ),
        "in_channels": in_channels,
        "input_dtype": in_dtype,
        "min_size": int(model_facts(net)["size_divisor"]),
        "normalize": mode,
        "normalize_words": _NORM_WORDS[mode]
        + (f", the range floored at {min_range:g} raw units" if min_range else ""),
        "min_range": min_range,
        "overlap": overlap,
        "version": __version__,
        "source": str(model),
        "network": cfg.model.name,
        "n_params": sum(p.numel() for p in net.parameters()),
        "loss": cfg.loss.name,
        "method": cfg.cluster.method,
        "cluster_params": params,
        "metrics": {
            k: float(v) for k, v in (card.get("val_metrics") or {}).items() if k in _SHOWN_METRICS
        },
        "dataset": dataset,
        "data_words": f"{dataset} ({data[3]})" if data else dataset,
        "cite": citations(cfg, dataset),
        "license": "BSD-3-Clause",
        "authors": authors or ["instembed developers"],
        "tags": _tags(cfg, data),
    }
    files = {
        WEIGHTS: weights,
        TEST_IN: _npy(x),
        TEST_OUT: _npy(y.astype(np.int32)),
        SAMPLE_IN: _tif(raw if raw.shape[0] > 1 else raw[0]),
        SAMPLE_OUT: _tif(y[0, 0].astype(np.int32)),
        "cover.png": _cover(raw, y[0, 0]),
        "LICENSE.txt": _BSD3.format(year=datetime.now(timezone.utc).year).encode(),
        "instembed_config.yaml": config_to_yaml(cfg).encode(),
    }
    files["README.md"] = _readme(f).encode()
    rdf = _rdf(f, files, cfg)
    files["rdf.yaml"] = yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().timetuple()[:6]
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for fname in ["rdf.yaml", *sorted(k for k in files if k != "rdf.yaml")]:
            info = zipfile.ZipInfo(fname, date_time=stamp)
            info.external_attr, info.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED
            zf.writestr(info, files[fname])
    log.info("wrote bioimage.io package %s (%d files)", out, len(files))
    return out


def _tags(cfg, data) -> list[str]:
    tags = ["instance-segmentation", "2d", "pytorch", "instembed", "pixel-embeddings"]
    tags += (data[1] + [data[2]]) if data else ["other"]
    if cfg.model.name == "unet":
        tags.append("unet")
    return tags


def _rdf(f: dict, files: dict[str, bytes], cfg) -> dict:
    """The ``rdf.yaml`` content (model description format :data:`FORMAT_VERSION`)."""

    def ref(fname: str) -> dict:
        return {"source": fname, "sha256": _sha256(files[fname])}

    space = {"min": f["min_size"], "step": 1}
    same = {"tensor_id": INPUT_ID}
    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": f["title"],
        "description": f["description"],
        "authors": [{"name": a} for a in f["authors"]],
        "cite": f["cite"],
        "license": f["license"],
        "tags": f["tags"],
        "version": f["version"],
        "timestamp": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "documentation": ref("README.md"),
        "covers": [ref("cover.png")],
        "attachments": [ref("LICENSE.txt"), ref("instembed_config.yaml")],
        "inputs": [
            {
                "id": INPUT_ID,
                "description": f"raw image, normalised inside the model ({f['normalize']})",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": _channel_names(f["in_channels"])},
                    {"type": "space", "id": "y", "size": dict(space)},
                    {"type": "space", "id": "x", "size": dict(space)},
                ],
                "test_tensor": ref(TEST_IN),
                "sample_tensor": ref(SAMPLE_IN),
                "data": {"type": f["input_dtype"]},
            }
        ],
        "outputs": [
            {
                "id": OUTPUT_ID,
                "description": "instance labels: 0 background, 1..N instances",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": ["instance_labels"]},
                    {"type": "space", "id": "y", "size": {**same, "axis_id": "y"}},
                    {"type": "space", "id": "x", "size": {**same, "axis_id": "x"}},
                ],
                "test_tensor": ref(TEST_OUT),
                "sample_tensor": ref(SAMPLE_OUT),
                "data": {"type": "int32", "range": [0, None]},
            }
        ],
        "weights": {
            "torchscript": {**ref(WEIGHTS), "pytorch_version": torch.__version__.split("+")[0]}
        },
        "config": {
            "bioimageio": {
                # labels are integers: any difference is a different segmentation
                "reproducibility_tolerance": [
                    {
                        "relative_tolerance": 0.0,
                        "absolute_tolerance": 0.0,
                        "mismatched_elements_per_million": 0,
                    }
                ],
                "model_parameter_count": f["n_params"],
            },
            "instembed": {
                "version": f["version"],
                "model": f["source"],
                "normalize": f["normalize"],
                **({"min_range": f["min_range"]} if f["min_range"] else {}),
                "cluster": {"method": cfg.cluster.method, "params": f["cluster_params"]},
                "size_divisor": f["min_size"],
            },
        },
    }


_SHOWN_METRICS = ("AP_dsb@0.5", "AP", "AP50", "AP75", "SBD", "PQ")


def _channel_names(n: int) -> list[str]:
    return ["gray"] if n == 1 else [f"channel{i}" for i in range(n)]


def test_package(path: str | Path, devices: list[str] | None = None):
    """Run ``bioimageio.core``'s model test on the package at ``path`` (offline: io checks of
    the files inside the package only; nothing in a package written here needs the network).
    Returns its ``ValidationSummary`` (``.status`` is ``"passed"`` or ``"failed"``,
    ``.format()`` the report). ImportError naming the extra when bioimageio.core is missing."""
    try:
        from bioimageio.core import test_model
    except ImportError:
        raise ImportError(
            "testing a bioimage.io package needs bioimageio.core: "
            "pip install 'instembed[bioimageio]'"
        ) from None
    return test_model(str(path), devices=devices or ["cpu"])


test_package.__test__ = False  # not a pytest test
