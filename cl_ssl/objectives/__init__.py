"""SSL objectives selectable by name (``--config.objective=NAME``).

An objective bundles the student network (backbone + heads), the two augmentation views and the
loss on the two views' outputs. ``get_objective(config)`` builds the one the config names.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from cl_ssl.objectives import simclr
from cl_ssl.objectives.base import Objective

__all__ = ["Objective", "OBJECTIVES", "get_objective"]

OBJECTIVES: dict[str, Callable[[ml_collections.ConfigDict], Objective]] = {
    "simclr": simclr.make,
}


def get_objective(config: ml_collections.ConfigDict) -> Objective:
    """Builds the objective named by ``config.objective``; ValueError for an unknown name."""
    if config.objective not in OBJECTIVES:
        raise ValueError(
            f"unknown objective {config.objective!r}; set --config.objective to one of "
            f"{sorted(OBJECTIVES)}"
        )
    return OBJECTIVES[config.objective](config)
