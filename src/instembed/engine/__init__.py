"""The engine: configs, training, prediction (tiling, TTA, writers), export.

Modules::

    config       typed dataclasses filled from YAML + ``key=value`` overrides
    checkpoint   atomic checkpoint writes, weights_only loads, compatibility checks
    build        model / loss / data / clusterer built from a config
    trainer      the training loop (single process or torchrun DDP)
    predict      tiled, test-time-augmented inference and the output writers
    export       TorchScript / ONNX export

Nothing heavy is imported here; import the sub-module you need.
"""
