"""Continual strategies selectable by name (``--config.strategy=NAME``).

A strategy decides what each training stage trains on and what the state carries across a stage
boundary (a frozen teacher, a memory, its own trainable heads), and may add a distillation term to
the objective's loss. ``finetune`` and ``offline`` are the lower and upper bounds of every
continual method (METHODS.md 3.1, 3.2); ``cassle`` and ``pfr`` distil the previous task's model
(3.3, 3.4).
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from cl_ssl.objectives import Objective
from cl_ssl.strategies import cassle, pfr
from cl_ssl.strategies.base import Strategy, make_finetune, make_offline

__all__ = ["STRATEGIES", "Strategy", "default_configs", "get_strategy"]

_FACTORIES: dict[str, Callable[[ml_collections.ConfigDict, Objective], Strategy]] = {
    "finetune": make_finetune,
    "offline": make_offline,
    "cassle": cassle.make,
    "pfr": pfr.make,
}
STRATEGIES = tuple(_FACTORIES)
"""The registered strategy names."""


def default_configs() -> dict[str, ml_collections.ConfigDict]:
    """name -> the strategy's own config section (``config.<name>``), for those that have one."""
    return {"cassle": cassle.default_config(), "pfr": pfr.default_config()}


def get_strategy(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """The strategy ``config.strategy`` for ``objective``; ValueError for an unknown name or an
    objective the strategy cannot serve."""
    if config.strategy not in _FACTORIES:
        raise ValueError(
            f"unknown strategy {config.strategy!r}; set --config.strategy to one of "
            f"{list(STRATEGIES)}"
        )
    return _FACTORIES[config.strategy](config, objective)
