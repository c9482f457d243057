"""Optimizers and learning-rate schedules of the CaSSLe / solo-learn training substrate.

* `lars`: SGD with momentum wrapped in CaSSLe's LARS (You et al., arXiv:1708.03888;
  `cassle/utils/lars.py`).
* `sgd`: PyTorch SGD with coupled weight decay (d = g + wd * w) and momentum, optionally Nesterov.
* `adamw`: optax's AdamW with the same bias/norm exclusion option.
* `radam`: RAdam (Liu et al., ICLR 2020) with decoupled weight decay, as its reference
  implementation (LiyuanLucasLiu/RAdam ``radam.py``), which Genifer trains its later tasks with;
  ``degenerated_to_sgd=False`` (the reference class's default, Genifer's) skips the first steps.
* `switch`: one optimizer or another, chosen per step (Genifer: SGD on the first task, RAdam after).
* `multistep_schedule`: PyTorch's `MultiStepLR`, stepped once per epoch.
* `warmup_cosine_schedule`: pl_bolts' `LinearWarmupCosineAnnealingLR` (linear warm-up, then
  the cosine of Loshchilov and Hutter, ICLR 2017), stepped once per epoch (CaSSLe) or once per
  step (solo-learn).

Every learning rate may be a float or an `optax.Schedule` of the optimizer's own step count. The
training loop re-initialises the optimizer state at each task, so that count, and with it the
schedule, restarts at every task as in the reference (one process per task).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "OPTIMIZERS",
    "adamw",
    "bias_and_norm_mask",
    "lars",
    "make_optimizer",
    "scale_by_lars_trust_ratio",
    "multistep_schedule",
    "radam",
    "sgd",
    "switch",
    "warmup_cosine_schedule",
]

ScalarOrSchedule = float | optax.Schedule


def bias_and_norm_mask(params: Any) -> Any:
    """True for every 1-D leaf (biases, BatchNorm scales and shifts), False otherwise.

    This is the reference's test `p.ndim == 1`; it works on arrays and on `jax.ShapeDtypeStruct`
    leaves. Returns a pytree of Python bools with the structure of `params`.
    """
    return jax.tree.map(lambda p: len(p.shape) == 1, params)


def _not_excluded_mask(params: Any) -> Any:
    return jax.tree.map(lambda excluded: not excluded, bias_and_norm_mask(params))


class LarsTrustRatioState(NamedTuple):
    """Step count (int32 scalar) used to evaluate the learning-rate schedule for the clip."""

    count: jax.Array


def scale_by_lars_trust_ratio(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: float,
    eta: float = 0.02,
    clip_lr: bool = True,
    exclude_bias_and_norm: bool = True,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """The LARS direction of CaSSLe's `LARSWrapper.update_p`, per tensor w with gradient g.

    * Excluded tensors (1-D, when `exclude_bias_and_norm`): d = g (no trust ratio, no decay).
    * ||w|| == 0 or ||g|| == 0: d = g. The reference skips `update_p` for such a tensor and has
      zeroed the group's weight decay for the wrapped SGD step, so the gradient passes through
      unchanged: a trust ratio of 1 *without* weight decay. This differs from a ratio of 1 with
      decay only when ||g|| == 0 < ||w||: d is then 0 rather than wd * w.
    * Otherwise r = eta * ||w|| / (||g|| + wd * ||w|| + eps); with `clip_lr`,
      r <- min(r / lr, 1) where lr is the current scheduled learning rate;
      d = r * (g + wd * w).

    Norms are Frobenius norms over the whole tensor, computed in float32.

    This is hand-written rather than `optax.lars`: optax adds the weight decay before computing
    the trust ratio (||w|| / ||g + wd w|| instead of ||w|| / (||g|| + wd ||w||)), has no
    learning-rate clip, and treats zero norms differently. The learning rate is needed here only
    for the clip; it is applied later by `optax.scale_by_learning_rate`, which keeps its own count
    in step with this one.
    """

    def schedule(count: jax.Array) -> jax.Array:
        return learning_rate(count) if callable(learning_rate) else learning_rate

    def init_fn(params: Any) -> LarsTrustRatioState:
        del params
        return LarsTrustRatioState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates: Any, state: LarsTrustRatioState, params: Any = None):
        if params is None:
            raise ValueError("LARS needs the current parameters: call update(grads, state, params)")
        lr = jnp.asarray(schedule(state.count), jnp.float32)

        def direction(g: jax.Array, w: jax.Array, excluded: bool) -> jax.Array:
            if excluded:
                return g
            g32 = g.astype(jnp.float32)
            w32 = w.astype(jnp.float32)
            w_norm = jnp.linalg.norm(w32)
            g_norm = jnp.linalg.norm(g32)
            ratio = eta * w_norm / (g_norm + weight_decay * w_norm + eps)
            if clip_lr:
                ratio = jnp.minimum(ratio / lr, 1.0)
            d = ratio * (g32 + weight_decay * w32)
            return jnp.where((w_norm > 0) & (g_norm > 0), d, g32).astype(g.dtype)

        if exclude_bias_and_norm:
            excluded = bias_and_norm_mask(params)
        else:
            excluded = jax.tree.map(lambda _: False, params)
        updates = jax.tree.map(direction, updates, params, excluded)
        return updates, LarsTrustRatioState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def lars(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: float,
    momentum: float = 0.9,
    eta: float = 0.02,
    clip_lr: bool = True,
    exclude_bias_and_norm: bool = True,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """CaSSLe's LARS around PyTorch SGD with momentum.

    LARS: You et al., arXiv:1708.03888; reference code CaSSLe ``cassle/utils/lars.py``.

    Per step: d = LARS direction (`scale_by_lars_trust_ratio`); v <- momentum * v + d (PyTorch
    momentum, no dampening; v starts at 0, so the first v is d); w <- w - lr * v. CIFAR
    settings: eta 0.02, clip on, bias/norm excluded (SwAV: not excluded). `update` must be
    given the parameters.

    Args:
      learning_rate: lr (float) or schedule of the step count within the task.
      weight_decay: coupled L2 coefficient wd (not applied to excluded tensors).
      momentum: SGD momentum.
      eta: LARS trust coefficient.
      clip_lr: clip the trust ratio to min(r / lr, 1).
      exclude_bias_and_norm: 1-D tensors skip the trust ratio and the weight decay.
      eps: added to the trust-ratio denominator.
    """
    return optax.chain(
        scale_by_lars_trust_ratio(
            learning_rate,
            weight_decay=weight_decay,
            eta=eta,
            clip_lr=clip_lr,
            exclude_bias_and_norm=exclude_bias_and_norm,
            eps=eps,
        ),
        optax.trace(decay=momentum),
        optax.scale_by_learning_rate(learning_rate),
    )


def sgd(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    exclude_bias_and_norm: bool = False,
) -> optax.GradientTransformation:
    """PyTorch SGD: d = g + wd * w (coupled decay); v <- momentum * v + d; w <- w - lr * v, or
    with `nesterov` w <- w - lr * (d + momentum * v).

    With `exclude_bias_and_norm`, 1-D tensors get no weight decay. `update` must be given the
    parameters when weight_decay is non-zero.
    """
    return optax.chain(
        optax.add_decayed_weights(
            weight_decay, mask=_not_excluded_mask if exclude_bias_and_norm else None
        ),
        optax.trace(decay=momentum, nesterov=nesterov),
        optax.scale_by_learning_rate(learning_rate),
    )


class RAdamState(NamedTuple):
    """RAdam's step count (int32 scalar) and moments (pytrees like the parameters)."""

    count: jax.Array
    mu: Any
    nu: Any


def radam(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    degenerated_to_sgd: bool = True,
    exclude_bias_and_norm: bool = False,
) -> optax.GradientTransformation:
    """RAdam (Liu et al., "On the variance of the adaptive learning rate and beyond", ICLR 2020)
    as its reference class ``RAdam`` (LiyuanLucasLiu/RAdam ``radam/radam.py`` l.5-94), with its
    decoupled weight decay.

    Per step t (from 1), with m and v the moments (m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2)
    g^2, updated at every step), rho_inf = 2 / (1 - b2) - 1 and
    rho_t = rho_inf - 2 t b2^t / (1 - b2^t):

    * rho_t >= 5: w <- w - lr * (wd * w + s_t * m / (sqrt(v) + eps)) with
      s_t = sqrt((1 - b2^t) (rho_t - 4) (rho_t - 2) rho_inf / ((rho_inf - 4) rho_t (rho_inf - 2)))
      / (1 - b1^t) (the reference adds eps to sqrt(v), not to the bias-corrected sqrt(v / (1 -
      b2^t)) as ``optax.scale_by_radam`` does);
    * rho_t < 5 (the first 5 steps at b2 = 0.999) and ``degenerated_to_sgd``:
      w <- w - lr * (wd * w + m / (1 - b1^t)), momentum SGD, as ``optax.scale_by_radam``;
    * rho_t < 5 without ``degenerated_to_sgd``: no change to w, no weight decay either (the
      reference class's default, ``degenerated_to_sgd=False``, l.7 and l.77-78, which Genifer's
      ``genifer/learner.py`` l.83-86 builds: the ``:genifer`` presets set it).

    ``degenerated_to_sgd`` defaults to True here (optax's behaviour, which cl_ssl had before the
    option existed). 1 - b2^t is computed as -expm1(t log b2), which keeps float32 close to the
    reference's float64 arithmetic on the scalars. With ``exclude_bias_and_norm``, 1-D tensors get
    no weight decay.
    """
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    log_b1, log_b2 = math.log(b1) if b1 > 0 else -math.inf, math.log(b2)

    def schedule(count: jax.Array) -> jax.Array:
        return learning_rate(count) if callable(learning_rate) else learning_rate

    def init_fn(params: Any) -> RAdamState:
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        return RAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

    def update_fn(updates: Any, state: RAdamState, params: Any = None):
        if weight_decay and params is None:
            raise ValueError("RAdam's weight decay needs the parameters: update(grads, state, p)")
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g.astype(jnp.float32), state.mu, updates)
        nu = jax.tree.map(
            lambda v, g: b2 * v + (1 - b2) * jnp.square(g.astype(jnp.float32)), state.nu, updates
        )
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        one_minus_b2t = -jnp.expm1(t * log_b2)
        one_minus_b1t = -jnp.expm1(t * log_b1)
        rho = rho_inf - 2.0 * t * (1.0 - one_minus_b2t) / one_minus_b2t
        rectified = rho >= 5.0
        ratio = (
            one_minus_b2t
            * (rho - 4.0)
            / (rho_inf - 4.0)
            * (rho - 2.0)
            / rho
            * rho_inf
            / (rho_inf - 2.0)
        )
        adaptive_size = jnp.sqrt(jnp.where(rectified, ratio, 1.0)) / one_minus_b1t
        moves = rectified | degenerated_to_sgd
        lr = jnp.asarray(schedule(state.count), jnp.float32)
        if exclude_bias_and_norm and params is not None:
            decayed = _not_excluded_mask(params)
        else:
            decayed = jax.tree.map(lambda _: True, mu)

        def direction(m, v, w, decay):
            step = jnp.where(rectified, adaptive_size * m / (jnp.sqrt(v) + eps), m / one_minus_b1t)
            if weight_decay and decay:
                step = step + weight_decay * w.astype(jnp.float32)
            return jnp.where(moves, -lr * step, 0.0)

        ws = params if params is not None else mu
        new_updates = jax.tree.map(
            lambda m, v, w, d, g: direction(m, v, w, d).astype(g.dtype),
            mu,
            nu,
            ws,
            decayed,
            updates,
        )
        return new_updates, RAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


class SwitchState(NamedTuple):
    first: optax.OptState
    second: optax.OptState


def switch(
    first: optax.GradientTransformation,
    second: optax.GradientTransformation,
    use_second: jax.Array,
) -> optax.GradientTransformation:
    """``first`` while ``use_second`` is 0, ``second`` once it is > 0; the state holds both
    optimizers' (fixed shapes whichever runs) and only the one that runs moves."""

    def init_fn(params):
        return SwitchState(first.init(params), second.init(params))

    def update_fn(updates, state, params=None):
        a, a_state = first.update(updates, state.first, params)
        b, b_state = second.update(updates, state.second, params)
        on = use_second > 0

        def pick(x, y):
            return jnp.where(on, y, x)

        return jax.tree.map(pick, a, b), SwitchState(
            jax.tree.map(lambda new, old: jnp.where(on, old, new), a_state, state.first),
            jax.tree.map(pick, state.second, b_state),
        )

    return optax.GradientTransformation(init_fn, update_fn)


def adamw(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    exclude_bias_and_norm: bool = False,
) -> optax.GradientTransformation:
    """`optax.adamw` (decoupled decay lr * wd * w); 1-D tensors undecayed on request."""
    return optax.adamw(
        learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=_not_excluded_mask if exclude_bias_and_norm else None,
    )


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "lars": lars,
    "sgd": sgd,
    "adamw": adamw,
    "radam": radam,
}
"""Optimizer names accepted by `make_optimizer`."""


def make_optimizer(
    name: str, *, learning_rate: ScalarOrSchedule, weight_decay: float, **kwargs: Any
) -> optax.GradientTransformation:
    """Builds the optimizer `name` ('lars', 'sgd', 'adamw' or 'radam'); `kwargs` go to its
    builder.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate, weight_decay=weight_decay, **kwargs)


def warmup_cosine_schedule(
    base_lr: float,
    *,
    total_epochs: int,
    warmup_epochs: int,
    steps_per_epoch: int,
    warmup_start_lr: float = 0.003,
    min_lr: float = 0.0,
    per_epoch: bool = True,
) -> optax.Schedule:
    """Linear warmup then cosine annealing, pl_bolts `LinearWarmupCosineAnnealingLR` closed form.

    With t the schedule unit index (the epoch `step // steps_per_epoch` when `per_epoch`, as
    CaSSLe steps its scheduler once per epoch; else the step itself, with W and E converted to
    steps as solo-learn does), W warmup units and E total units:

      t < W:  lr_t = warmup_start_lr + t * (base_lr - warmup_start_lr) / max(W - 1, 1)
      t >= W: lr_t = min_lr + (base_lr - min_lr) * (1 + cos(pi * min(t - W, E - W) / (E - W))) / 2

    So warmup reaches base_lr at t = W - 1 and the cosine starts from base_lr at t = W (base_lr
    is held for two units). W = 1 gives warmup_start_lr at t = 0, then the cosine, as pl_bolts'
    recursive form does (its closed form divides by zero there); W = 0 is a plain cosine from
    base_lr. Past the end (t >= E) the rate stays at min_lr instead of rising again.

    Args:
      base_lr: peak learning rate (already scaled by batch size if wanted).
      total_epochs: E, epochs of the task.
      warmup_epochs: W, 0 <= W < E.
      steps_per_epoch: optimizer steps per epoch.
      warmup_start_lr: rate at the first warmup unit.
      min_lr: final rate of the cosine.
      per_epoch: constant rate within an epoch (True) or per-step interpolation (False).

    Returns:
      A schedule mapping the step count within the task (int scalar) to a float32 rate.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if not 0 <= warmup_epochs < total_epochs:
        raise ValueError(
            f"need 0 <= warmup_epochs < total_epochs, got {warmup_epochs} and {total_epochs}"
        )
    unit = 1 if per_epoch else steps_per_epoch
    warmup, total = warmup_epochs * unit, total_epochs * unit
    warmup_slope = (base_lr - warmup_start_lr) / max(warmup - 1, 1)

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step)
        t = (step // steps_per_epoch if per_epoch else step).astype(jnp.float32)
        warm = warmup_start_lr + t * warmup_slope
        progress = jnp.clip((t - warmup) / (total - warmup), 0.0, 1.0)
        cosine = min_lr + (base_lr - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(t < warmup, warm, cosine)

    return schedule


def multistep_schedule(
    base_lr: float,
    *,
    total_epochs: int,
    steps_per_epoch: int,
    milestones: tuple[float, ...],
    factor: float,
) -> optax.Schedule:
    """PyTorch ``MultiStepLR`` stepped once per epoch: base_lr * factor^k during epoch e, k the
    number of milestones m (fractions of the total epochs) with round(m * total_epochs) <= e
    (Genifer: x0.2 at epochs 30, 60 and 80 of 100)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    bounds = jnp.asarray([round(m * total_epochs) for m in milestones], jnp.int32)

    def schedule(step: jax.Array) -> jax.Array:
        epoch = jnp.asarray(step) // steps_per_epoch
        passed = jnp.sum(bounds <= epoch)
        return jnp.asarray(base_lr, jnp.float32) * jnp.float32(factor) ** passed

    return schedule


# ---------------------------------------------------------------------------------------------
# Parameter groups (optax.multi_transform)


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """The optimizer settings of one group of parameters.

    Attributes:
      lr_scale: the group's base learning rate is the run's times this; its schedule has the run's
        shape (warm-up and cosine), restarted from that base, as PyTorch's per-group schedulers do.
      lr: an absolute base learning rate instead (not scaled by the batch size); None: ``lr_scale``.
      weight_decay: the group's weight decay; None: the run's.
      frozen: no update and no optimizer state (``optax.set_to_zero``).
      active: the name of a per-step scalar of the step's ``hyper`` (1: update, 0: skip the step:
        parameters *and* optimizer state unchanged, as PyTorch skips a parameter whose gradient is
        None); None: always active.
      static: the group's base learning rate at every step, without warm-up or decay (CaSSLe's
        and solo-learn's ``static_lr`` groups, ``cassle/methods/base.py`` l.20-26, l.332-338).
    """

    lr_scale: float = 1.0
    lr: float | None = None
    weight_decay: float | None = None
    frozen: bool = False
    active: str | None = None
    static: bool = False

    @property
    def own_schedule(self) -> bool:
        return self.lr is not None or self.lr_scale != 1.0 or self.static


DEFAULT_GROUP = "default"


def gated(inner: optax.GradientTransformation, active: jax.Array) -> optax.GradientTransformation:
    """``inner`` when ``active`` > 0; otherwise zero updates and ``inner``'s state kept as it was.

    Unlike zeroing the updates after the fact, a skipped step accumulates no momentum and no
    weight decay (SwAV's prototype freeze: solo-learn sets their gradients to None, and PyTorch's
    SGD and CaSSLe's LARS skip such parameters, ``cassle/utils/lars.py`` l.88-93).
    """

    def update_fn(updates, state, params=None):
        new_updates, new_state = inner.update(updates, state, params)
        keep = active > 0
        new_updates = jax.tree.map(lambda u: jnp.where(keep, u, jnp.zeros_like(u)), new_updates)
        new_state = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_state, state)
        return new_updates, new_state

    return optax.GradientTransformation(inner.init, update_fn)


def label_top_level(tree: Any, names: dict[str, str]) -> Any:
    """Labels for ``optax.multi_transform``: every leaf under the top-level key ``k`` of ``tree``
    gets ``names[k]``, every other leaf ``DEFAULT_GROUP``."""

    def label(key: str, subtree: Any) -> Any:
        name = names.get(key, DEFAULT_GROUP)
        return jax.tree.map(lambda _: name, subtree)

    return {key: label(key, value) for key, value in tree.items()}
