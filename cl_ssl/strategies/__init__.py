"""Continual strategies selectable by name (``--config.strategy=NAME``).

A strategy decides what each training stage trains on and what the state carries across a stage
boundary (a frozen teacher, a memory, its own trainable heads), and fills the hooks of
``Strategy``: it may extend the batch, draw rows only its own term sees, add a loss term, update
its buffers after each step and rewrite its state at the end of a task. ``finetune`` and
``offline`` are the lower and upper bounds of every continual method; ``cassle`` and ``pfr`` distil
the previous task's model; ``replay`` and ``lump`` rehearse examples from an exemplar memory;
``kaizen`` trains a classifier through the stream next to the SSL model, with rehearsal and
distillation for both; ``ccl`` rehearses label-free exemplars with a relational distillation and an
extra queue of their keys. ``finetune_supervised`` and ``replay_supervised`` train a classifier
with cross-entropy through the backbone (with ``objective=supervised``): the supervised path of
Genifer's baselines; ``genifer`` replays old classes from a GAN whose discriminator judges the
classifier's features; with ``replay.source=generator`` a self-supervised strategy replays from
such a GAN too.

Every strategy is a module that declares a ``StrategySpec`` as its module-level ``STRATEGY``; a
run names it by the module's import path (``--config.strategy=my_project.my_method``, or
``my_project.my_method:OTHER_SPEC`` for a spec under another name), and the built-in names below
are short names for the library's own modules. ``cl_ssl.config.use_strategy`` sets the name and
adds the strategy's config section to a config: a config file calls it for a strategy with
settings, which the command line alone cannot add.
"""

from __future__ import annotations

import importlib

import ml_collections

from cl_ssl.objectives import SUPERVISED, Objective
from cl_ssl.strategies.base import (
    BufferInputs,
    LossInputs,
    Phase,
    PhaseStart,
    RowInputs,
    Strategy,
    StrategySpec,
    TaskEnd,
)

__all__ = [
    "BUILTIN",
    "STRATEGIES",
    "BufferInputs",
    "LossInputs",
    "Phase",
    "PhaseStart",
    "RowInputs",
    "Strategy",
    "StrategySpec",
    "TaskEnd",
    "default_configs",
    "get_strategy",
    "load_spec",
    "sections_read",
]

_PACKAGE = "cl_ssl.strategies"
BUILTIN = {
    "finetune": f"{_PACKAGE}.base:FINETUNE",
    "offline": f"{_PACKAGE}.base:OFFLINE",
    "cassle": f"{_PACKAGE}.cassle",
    "pfr": f"{_PACKAGE}.pfr",
    "replay": f"{_PACKAGE}.replay",
    "lump": f"{_PACKAGE}.lump",
    "kaizen": f"{_PACKAGE}.kaizen",
    "ccl": f"{_PACKAGE}.ccl",
    "finetune_supervised": f"{_PACKAGE}.supervised:FINETUNE_SUPERVISED",
    "replay_supervised": f"{_PACKAGE}.supervised:REPLAY_SUPERVISED",
    "genifer": f"{_PACKAGE}.genifer",
    "pocon": f"{_PACKAGE}.pocon",
}
"""Built-in name -> where its ``StrategySpec`` is, as a user's strategy is named:
``package.module`` (its ``STRATEGY``) or ``package.module:ATTRIBUTE``."""
STRATEGIES = tuple(BUILTIN)
"""The built-in strategy names."""

SPEC_ATTRIBUTE = "STRATEGY"
"""The module attribute that holds a strategy module's ``StrategySpec``."""


def load_spec(name: str) -> StrategySpec:
    """The ``StrategySpec`` of ``name``: a built-in name, ``package.module`` (its ``STRATEGY``) or
    ``package.module:ATTRIBUTE``; ValueError saying what to change when there is none."""
    path = BUILTIN.get(name, name)
    module_name, _, attribute = path.partition(":")
    attribute = attribute or SPEC_ATTRIBUTE
    how = (
        f"set --config.strategy to one of {list(STRATEGIES)}, or to the import path of a module "
        f"of your own that defines {SPEC_ATTRIBUTE} = cl_ssl.strategies.StrategySpec(...)"
    )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name and "." not in module_name:
            raise ValueError(f"unknown strategy {name!r}; {how}") from error
        if error.name and module_name.startswith(error.name):
            raise ValueError(
                f"strategy {name!r}: no module {error.name!r} can be imported (Python looks in the "
                f"working directory, PYTHONPATH and the installed packages); {how}"
            ) from error
        raise ValueError(
            f"strategy {name!r}: importing module {module_name!r} failed: {error}"
        ) from error
    spec = getattr(module, attribute, None)
    if not isinstance(spec, StrategySpec):
        found = "nothing" if spec is None else f"a {type(spec).__name__}"
        raise ValueError(
            f"strategy {name!r}: module {module_name!r} has {found} as {attribute}; define "
            f"{attribute} = cl_ssl.strategies.StrategySpec(make=..., section=..., "
            "default_config=...) in it"
        )
    return spec


def default_configs() -> dict[str, ml_collections.ConfigDict]:
    """Section name -> its defaults, for the built-in strategies that have settings
    (``config.<section>``)."""
    specs = (load_spec(name) for name in STRATEGIES)
    return {spec.section: spec.default_config() for spec in specs if spec.section}


GENERATOR = "generator"
"""``replay.source`` that draws the replay rows from a GAN (``generative.with_generator_replay``)."""


def sections_read(config: dict) -> set[str]:
    """The config sections of strategies that a run of ``config`` (a dict) reads: its strategy's
    own and those its spec ``reads`` (Kaizen's feature distiller is CaSSLe's), and with
    ``replay.source='generator'`` the replay settings and the GAN's (``genifer``). A strategy
    whose module cannot be imported here reads the section of its name."""
    name = config.get("strategy")
    try:
        spec = load_spec(name)
        read = {spec.section, *spec.reads} - {None}
    except ValueError:
        read = {name}
    if config.get("replay", {}).get("source") == GENERATOR:
        read |= {"replay", "genifer"}
    return read


def get_strategy(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """The strategy ``config.strategy`` for ``objective``; ValueError for a name that names no
    strategy, a missing config section, or an objective the strategy cannot serve."""
    from cl_ssl.strategies import generative, replay  # noqa: PLC0415 -- they import this package

    spec = load_spec(config.strategy)
    if spec.section and spec.section not in config:
        raise ValueError(
            f"strategy {config.strategy!r} reads config.{spec.section}, which this config lacks; "
            f"build the config with cl_ssl.config.use_strategy(config, {config.strategy!r}), "
            "which adds the section with its defaults"
        )
    if objective.name == SUPERVISED and not spec.supervised:
        supervised = [n for n in STRATEGIES if load_spec(n).supervised]
        raise ValueError(
            f"objective {SUPERVISED!r} has no self-supervised term, so strategy "
            f"{config.strategy!r} would train nothing; choose one of the supervised strategies "
            f"{supervised}"
        )
    if config.replay.source not in replay.SOURCES:
        raise ValueError(
            f"replay.source={config.replay.source!r}; choose one of {list(replay.SOURCES)}"
        )
    strategy = spec.make(config, objective)
    if config.replay.source == GENERATOR:
        strategy = generative.with_generator_replay(strategy, config, objective)
    return strategy
