r"""instembed: instance segmentation by pixel embeddings.

The pipeline, one sub-package per stage::

    image -> data (Sample) -> models (network -> Outputs) -> losses (training)
                                                        \-> cluster -> Instances -> metrics / writers

``instembed.metrics`` needs only numpy and scipy; everything else builds on PyTorch.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
