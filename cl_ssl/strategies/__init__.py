"""Continual strategies selectable by name (``--config.strategy=NAME``).

A strategy decides what each training stage trains on and what the state carries across a stage
boundary (a frozen teacher, a memory, its own trainable heads), and fills the hooks of
``Strategy``: it may extend the batch, add a loss term, update its buffers after each step and
rewrite its state at the end of a task. ``finetune`` and ``offline`` are the lower and upper
bounds of every continual method; ``cassle`` and ``pfr`` distil the previous task's model;
``replay`` and ``lump`` rehearse examples from an exemplar memory; ``kaizen`` trains a classifier
through the stream next to the SSL model, with rehearsal and distillation for both; ``ccl``
rehearses label-free exemplars with a relational distillation and an extra queue of their keys.
``finetune_supervised`` and ``replay_supervised`` train a classifier with cross-entropy through the
backbone (with ``objective=supervised``): the supervised path of Genifer's baselines; ``genifer``
replays old classes from a GAN whose discriminator judges the classifier's features; with
``replay.source=generator`` a self-supervised strategy replays from such a GAN too.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from cl_ssl.objectives import SUPERVISED, Objective
from cl_ssl.strategies import (
    cassle,
    ccl,
    generative,
    genifer,
    kaizen,
    lump,
    pfr,
    replay,
    supervised,
)
from cl_ssl.strategies.base import (
    BufferInputs,
    LossInputs,
    Strategy,
    TaskEnd,
    make_finetune,
    make_offline,
)

__all__ = [
    "STRATEGIES",
    "BufferInputs",
    "LossInputs",
    "Strategy",
    "TaskEnd",
    "default_configs",
    "get_strategy",
    "sections_read",
]

_FACTORIES: dict[str, Callable[[ml_collections.ConfigDict, Objective], Strategy]] = {
    "finetune": make_finetune,
    "offline": make_offline,
    "cassle": cassle.make,
    "pfr": pfr.make,
    "replay": replay.make,
    "lump": lump.make,
    "kaizen": kaizen.make,
    "ccl": ccl.make,
    "finetune_supervised": supervised.make,
    "replay_supervised": supervised.make,
    "genifer": genifer.make,
}
STRATEGIES = tuple(_FACTORIES)
"""The registered strategy names."""


def default_configs() -> dict[str, ml_collections.ConfigDict]:
    """name -> the strategy's own config section (``config.<name>``), for those that have one."""
    return {
        "cassle": cassle.default_config(),
        "pfr": pfr.default_config(),
        "replay": replay.default_config(),
        "lump": lump.default_config(),
        "kaizen": kaizen.default_config(),
        "ccl": ccl.default_config(),
        "genifer": genifer.default_config(),
    }


GENERATOR = "generator"
"""``replay.source`` that draws the replay rows from a GAN (``generative.with_generator_replay``)."""

# Sections of other strategies that a strategy reads besides its own.
_ALSO_READS = {"kaizen": ("cassle",), "replay_supervised": ("replay",)}


def sections_read(config: dict) -> set[str]:
    """The config sections of strategies that a run of ``config`` (a dict) reads: its strategy's
    own and, for those built on another, that one's (Kaizen's feature distiller is CaSSLe's), and
    with ``replay.source='generator'`` the replay settings and the GAN's (``genifer``)."""
    name = config.get("strategy")
    read = {name, *_ALSO_READS.get(name, ())}
    if config.get("replay", {}).get("source") == GENERATOR:
        read |= {"replay", "genifer"}
    return read


def get_strategy(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """The strategy ``config.strategy`` for ``objective``; ValueError for an unknown name or an
    objective the strategy cannot serve."""
    if config.strategy not in _FACTORIES:
        raise ValueError(
            f"unknown strategy {config.strategy!r}; set --config.strategy to one of "
            f"{list(STRATEGIES)}"
        )
    if objective.name == SUPERVISED and config.strategy not in supervised.STRATEGIES:
        raise ValueError(
            f"objective {SUPERVISED!r} has no self-supervised term, so strategy "
            f"{config.strategy!r} would train nothing; choose one of the supervised strategies "
            f"{list(supervised.STRATEGIES)}"
        )
    if config.replay.source not in replay.SOURCES:
        raise ValueError(
            f"replay.source={config.replay.source!r}; choose one of {list(replay.SOURCES)}"
        )
    strategy = _FACTORIES[config.strategy](config, objective)
    if config.replay.source == GENERATOR:
        strategy = generative.with_generator_replay(strategy, config, objective)
    return strategy
