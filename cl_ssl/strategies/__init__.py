"""Continual strategies selectable by name (``--config.strategy=NAME``).

A strategy decides what each training stage trains on and what the state carries across a stage
boundary (a frozen teacher, a memory). ``finetune`` and ``offline`` are the lower and upper bounds
of every continual method (METHODS.md 3.1, 3.2).
"""

from __future__ import annotations

from cl_ssl.strategies.base import Strategy, finetune, offline

__all__ = ["Strategy", "STRATEGIES", "get_strategy"]

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (finetune, offline)}


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``; ValueError for an unknown name."""
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown strategy {name!r}; set --config.strategy to one of {sorted(STRATEGIES)}"
        )
    return STRATEGIES[name]
