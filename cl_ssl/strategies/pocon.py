"""POCON, plasticity-optimized complementary networks (Gomez-Villa, Twardowski, Wang, van de Weijer,
WACV 2024, arXiv 2309.06086), in its CopyOP form, the one of the paper's tables.

Each task trains in two phases (``Strategy.phases``), as the official ``Appr.train``
(``alviur/pocon_wacv2024`` @ 2c38b9c, ``src/approach/copyOPscratch.py`` l.425-589) does; the
notation is the paper's method figure (``figs/method2-1.png``): expert g, main network f,
adaptation projector n, retrospection projector m.

1. Expert phase (``epochs_per_task`` epochs; ``pocon.first_task_epochs`` on the first task): the
   expert g, started from the main network (CopyOP, l.589), learns the task with the objective's
   SSL loss and projector alone, free of any regulariser; f is frozen (optimizer mode 0: the
   projector and g, ``src/approach/sslModels.py`` l.251-256).
2. Adaptation-retrospection phase (``pocon.adaptation_epochs``; ``first_adaptation_epochs`` on
   the first task): f learns g's representation through n while m keeps f's own past (optimizer
   mode 1: f, n, m, ``sslModels.py`` l.257-262). With f^v the main network's features [B, F] of
   view v in train mode, g^v and f_old^v those of the frozen expert and of the main network at
   the end of the previous task, both with BatchNorm in inference mode (``set_bn_eval``, l.546,
   l.557), and u(.) the row-wise x / max(||x||, 1e-12):

       L = lambda_a sum_v ||u(n(f^v)) - u(g^v)||_F + lambda_r sum_v ||u(m(f^v)) - u(f_old^v)||_F

   (``sslModels.py`` l.146-190, ``kd_method='L2'``): ``torch.dist``, the Frobenius norm of the
   whole [B, F] difference (not a mean over rows), summed over the two views; lambda_a =
   ``lambdaExp`` = 1 (default), lambda_r = ``lambdapRet`` = 25 (``src/tests/wacv.py``); the
   retrospection term from the second task on. The phase has no SSL term.

Here the student is always the network its phase trains: g in the expert phase, f in the other.
``start_phase`` snapshots the trained g (BatchNorm statistics included: ``copyExpert``, l.539) and
puts f's backbone in the student's place; the student's projector rests in the optimizer group
``pocon_heads``, which trains in the expert phase only, as n and m train in the adaptation phase
only (m from the second task on: at the first it has no gradient, which PyTorch's SGD skips).
After the task the student holds f, which the probes score, and goes on as the next task's
expert (the code copies f into g, l.589; the projector carries over). n is drawn afresh for
every adaptation phase (l.548); m is drawn once and carried (l.460). Every phase starts with a
fresh optimizer (``configure_optimizers`` in each phase, l.516, l.562).

Projectors by the code's numbering, ``utilsProj.prediction_mlp(F, F / 2, k)`` (l.5-59), F the
feature width, hidden layers Linear-BN-ReLU: 0, Linear(F, F); 1, F -> F/2 -> F; 2,
F -> F/2 -> F/2 -> F; 3 (n in the official run script, ``--linearProj 3``, although its
docstring says the paper used 1, ``src/tests/wacv.py`` l.65-66, l.76), F -> 2F -> F -> 2F -> F;
4, F -> 2F -> F -> 2F -> F -> 2F -> F. m is 0 (``linearProjRet``'s default).

Paper and code. Of the paper, only its abstract and the method figure could be read here; the
code agrees with both, and its text (the loss equations) could not be compared: the losses
above are the code's. The code does what the figure leaves open, and this module follows it:
- an adaptation phase on the first task too (``task1_Retnepochs``, 500 epochs, the adaptation
  term alone), into a main network drawn at random apart from the expert
  (``BarlowTwins.backbone``, ``sslModels.py`` l.59-63); here that draw uses the strategy's key;
- Barlow Twins scaled by 0.025 with off-diagonal weight 0.0051 (``sslModels.py`` l.142), built
  whatever ``--sslModel`` says (``copyOPscratch.py`` l.441). Here any objective without its own
  optimizer groups trains the expert (``--config.objective``); the ``:pocon`` preset uses Barlow
  Twins as the code does.

This library against the code:
- ``MLPHead`` gives every Linear a bias; the code's first Linear of n and the Barlow Twins
  projector have none (before BatchNorm in train mode such a bias changes only its own decay).
- The ResNet-18 has no ``zero_init_residual`` (the code's torchvision ResNet zero-initialises the
  last BatchNorm scale of each block).
- The expert and the main network start from two independent random draws, as in the code, but
  not the code's draws.
- The probes are the library's, as for every strategy.

The probes score the main network. ``--config.eval.network=expert`` scores the expert of each
task instead (``Strategy.networks``; the official "Omnihead Expert" accuracy of
``copyOPscratch.py`` l.731, ``_train_Expert`` l.814-929), in a run or from a finished run's
checkpoints:
``python -m cl_ssl.rescore --workdir=DIR --config.eval.network=expert``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from cl_ssl import optim
from cl_ssl.losses import l2_normalize
from cl_ssl.models import heads
from cl_ssl.objectives import Objective
from cl_ssl.state import StrategyState
from cl_ssl.strategies.base import (
    LossInputs,
    Phase,
    PhaseStart,
    Strategy,
    StrategySpec,
    TaskEnd,
    apply_head,
    apply_teacher,
    output_widths,
    snapshot,
)

HEADS, ADAPTATION, RETROSPECTION = "pocon_heads", "pocon_adaptation", "pocon_retrospection"
"""The optimizer groups: the student's heads (the expert's projector), g_a and g_r."""
EXPERT_PHASE, ADAPTS, RETROSPECTS = "pocon/expert", "pocon/adapt", "pocon/retrospect"
"""The per-phase switches (``Phase.hyper``) of those groups."""
PROJECTORS = (0, 1, 2, 3, 4)


def default_config() -> ml_collections.ConfigDict:
    """``config.pocon``: the official CIFAR-100 run (``src/tests/wacv.py``): expert epochs are
    ``epochs_per_task`` (``--nepochs`` 500) and ``first_task_epochs`` on the first task
    (``--task1_nepochs`` 500; -1: ``epochs_per_task``); adaptation-retrospection 250 epochs
    (``--ret_nepochs``), 500 on the first task (``--task1_Retnepochs``); lambda_a 1
    (``lambdaExp`` default), lambda_r 25 (``--lambdapRet``); g_a numbered 3 (``--linearProj``),
    g_r 0 (``linearProjRet`` default)."""
    return ml_collections.ConfigDict(
        dict(
            first_task_epochs=-1,
            adaptation_epochs=250,
            first_adaptation_epochs=500,
            adaptation_weight=1.0,
            retrospection_weight=25.0,
            adaptation_projector=3,
            retrospection_projector=0,
        )
    )


def projector(number: int, width: int) -> heads.MLPHead:
    """``utilsProj.prediction_mlp(width, width // 2, number)``: features [B, F] -> [B, F]."""
    half, double = width // 2, 2 * width
    hidden = {
        0: (),
        1: (half,),
        2: (half, half),
        3: (double, width, double),
        4: (double, width, double, width, double),
    }[number]
    return heads.MLPHead(hidden_dims=hidden, out_dim=width, batch_norm=True)


def normalized_distance(x: jax.Array, y: jax.Array) -> jax.Array:
    """||n(x) - n(y)||_F for x, y [B, F], n the row-wise L2 normalisation: the official
    ``torch.dist(F.normalize(x), F.normalize(y))`` (``sslModels.py`` l.160-161)."""
    diff = l2_normalize(x.astype(jnp.float32)) - l2_normalize(y.astype(jnp.float32))
    return jnp.sqrt(jnp.sum(diff * diff))


def _backbone(module, images, train):
    return module.backbone(images, train=train)


def _backbone_only(tree):
    return {"backbone": tree["backbone"]}


def _check(config: ml_collections.ConfigDict) -> None:
    c = config.pocon
    for field in ("adaptation_epochs", "first_adaptation_epochs"):
        if not c[field] >= 1:
            raise ValueError(f"pocon.{field}={c[field]}; set at least 1 epoch")
    if not (c.first_task_epochs == -1 or c.first_task_epochs >= 1):
        raise ValueError(
            f"pocon.first_task_epochs={c.first_task_epochs}; set -1 (epochs_per_task) or at "
            "least 1 epoch"
        )
    if not (math.isfinite(c.adaptation_weight) and c.adaptation_weight > 0):
        raise ValueError(
            f"pocon.adaptation_weight={c.adaptation_weight}; set a finite weight > 0 (without "
            "the adaptation term the main network learns nothing)"
        )
    if not (math.isfinite(c.retrospection_weight) and c.retrospection_weight >= 0):
        raise ValueError(
            f"pocon.retrospection_weight={c.retrospection_weight}; set a finite weight >= 0"
        )
    for field in ("adaptation_projector", "retrospection_projector"):
        if c[field] not in PROJECTORS:
            raise ValueError(
                f"pocon.{field}={c[field]}; choose one of {list(PROJECTORS)} (the official "
                "utilsProj.prediction_mlp numbering)"
            )
    warmup = config.optimizer.warmup_epochs
    first = config.epochs_per_task if c.first_task_epochs == -1 else c.first_task_epochs
    for name, value in (
        ("epochs_per_task", config.epochs_per_task),
        ("pocon.first_task_epochs", first),
        ("pocon.adaptation_epochs", c.adaptation_epochs),
        ("pocon.first_adaptation_epochs", c.first_adaptation_epochs),
    ):
        if warmup is not None and not 0 <= warmup < value:
            raise ValueError(
                f"{name}={value} epochs, and each POCON phase restarts the schedule with "
                f"optimizer.warmup_epochs={warmup} of warm-up; raise {name} or lower "
                "optimizer.warmup_epochs"
            )


def make(config: ml_collections.ConfigDict, objective: Objective) -> Strategy:
    """POCON from ``config.pocon`` (see the module docstring); ValueError for bad settings."""
    _check(config)
    if objective.param_groups:
        raise ValueError(
            f"objective {objective.name!r} trains parameters in optimizer groups of its own "
            f"({sorted(objective.param_groups)}), which cannot rest in POCON's adaptation phase; "
            "choose another --config.objective (the official code trains Barlow Twins)"
        )
    c = config.pocon
    model = objective.model
    width = output_widths(objective)["features"]
    adapt_head = projector(c.adaptation_projector, width)
    retro_head = projector(c.retrospection_projector, width)
    take = snapshot(_backbone_only)
    crop = objective.views[0].crop_size

    def init_head(head, key):
        return head.init(key, jnp.zeros((2, width)), train=False)["params"]

    def phases(stage: int) -> tuple[Phase, ...]:
        first = stage == 0
        expert = config.epochs_per_task
        if first and c.first_task_epochs != -1:
            expert = c.first_task_epochs
        adapt = c.first_adaptation_epochs if first else c.adaptation_epochs
        return (
            Phase(epochs=expert, hyper={EXPERT_PHASE: 1.0, ADAPTS: 0.0, RETROSPECTS: 0.0}),
            Phase(
                epochs=adapt,
                objective=False,
                hyper={EXPERT_PHASE: 0.0, ADAPTS: 1.0, RETROSPECTS: float(not first)},
            ),
        )

    def init(variables, key, train):
        del train
        k_main, k_adapt, k_retro = jax.random.split(key, 3)
        # The main network's own random draw (the official BarlowTwins.backbone).
        main = model.init(k_main, jnp.zeros((1, crop, crop, 3)), train=True)
        return StrategyState(
            trainable={
                "adaptation": init_head(adapt_head, k_adapt),
                "retrospection": init_head(retro_head, k_retro),
            },
            frozen={
                "main": take(main["params"], main.get("batch_stats", {})),
                "expert": take(variables["params"], variables.get("batch_stats", {})),
            },
        )

    def start_phase(start: PhaseStart):
        s = start.state
        main = s.strategy.frozen["main"]
        fresh = jax.tree.map(jnp.copy, main)
        params = {**s.params, "backbone": fresh["params"]["backbone"]}
        batch_stats = {**s.batch_stats, "backbone": fresh["batch_stats"]["backbone"]}
        key = jax.random.fold_in(jax.random.fold_in(start.key, start.stage), start.phase)
        strategy = StrategyState(
            trainable={
                "adaptation": init_head(adapt_head, key),
                "retrospection": s.strategy.trainable["retrospection"],
            },
            frozen={"main": main, "expert": take(s.params, s.batch_stats)},
            buffers=s.strategy.buffers,
        )
        return params, batch_stats, strategy

    def end_task(end: TaskEnd) -> StrategyState:
        s = end.state
        frozen = {**s.strategy.frozen, "main": take(s.params, s.batch_stats)}
        return s.strategy.replace(frozen=frozen)

    def loss(inputs: LossInputs):
        if inputs.phase == 0:
            return jnp.zeros((), jnp.float32), {}
        frozen, params = inputs.state.frozen, inputs.trainable
        features = [out["features"] for out in inputs.outputs]

        def term(head, head_params, teacher):
            value = 0.0
            for f, x in zip(features, inputs.views, strict=True):
                target = apply_teacher(model, teacher, x, train_bn=False, method=_backbone)
                value = value + normalized_distance(apply_head(head, head_params, f), target)
            return value

        adaptation = term(adapt_head, params["adaptation"], frozen["expert"])

        def retrospection():
            return term(retro_head, params["retrospection"], frozen["main"])

        retro = lax.cond(inputs.task > 0, retrospection, lambda: jnp.zeros((), jnp.float32))
        total = c.adaptation_weight * adaptation + c.retrospection_weight * retro
        return total, {"adaptation": adaptation, "retrospection": retro}

    def expert(state):
        """The last expert trained (the student's initial draw before any) with the student's
        heads: (params, BatchNorm statistics)."""
        net = state.strategy.frozen["expert"]
        return (
            {**state.params, "backbone": net["params"]["backbone"]},
            {**state.batch_stats, "backbone": net["batch_stats"]["backbone"]},
        )

    def student_labels(params, labels):
        del params
        return {
            key: tree if key == "backbone" else jax.tree.map(lambda _: HEADS, tree)
            for key, tree in labels.items()
        }

    return Strategy(
        name="pocon",
        phases=phases,
        init=init,
        start_phase=start_phase,
        end_task=end_task,
        loss=loss,
        student_labels=student_labels,
        networks={"expert": expert},
        param_labels=lambda tree: optim.label_top_level(
            tree, {"adaptation": ADAPTATION, "retrospection": RETROSPECTION}
        ),
        param_groups={
            HEADS: optim.ParamGroup(active=EXPERT_PHASE),
            ADAPTATION: optim.ParamGroup(active=ADAPTS),
            RETROSPECTION: optim.ParamGroup(active=RETROSPECTS),
        },
    )


STRATEGY = StrategySpec(make=make, section="pocon", default_config=default_config)
