"""The unit of work a pipeline hands the daemon for a model: kept free of torch so that
pipelines (and tools that only detect beats) never load it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass(eq=False)
class InferenceJob:
    """A pipeline's request to run the model of ``[models] <model>`` on one item.

    ``inputs`` are unbatched, in the model's argument order; None means there is nothing to
    compute (the item could not be cut), yet ``finish`` must still run in its turn. The
    daemon calls ``finish`` with the model's output row(s), or None when no model is loaded
    or its call failed, in submission order per pipeline, and publishes what it returns.
    """

    model: str
    inputs: tuple[np.ndarray, ...] | None
    finish: Callable[[Any], list[Any]]
