"""POCON (cl_ssl/strategies/pocon.py) against a NumPy transcription of the official code
(``alviur/pocon_wacv2024`` @ 2c38b9c), its two phases in the step, and its life cycle in a run."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import initial_state, random_split, run, shipped_config, tiny_objective_config

from cl_ssl import objectives, parallel, planning, rescore, strategies
from cl_ssl import step as step_lib
from cl_ssl.data import sources
from cl_ssl.data.batch import TrainData
from cl_ssl.strategies import PhaseStart, TaskEnd
from cl_ssl.strategies.base import LossInputs, output_widths

# Tiny Barlow Twins experts; one expert epoch and one adaptation epoch per task (mock CIFAR-10:
# 24 images per task, 3 steps per epoch at batch 8): 6 steps per task, the phase switch at 3.
POCON = {
    "strategy": "pocon",
    "epochs_per_task": 1,
    "optimizer.warmup_epochs": 0,
    "pocon.adaptation_epochs": 1,
    "pocon.first_adaptation_epochs": 1,
    "eval.evaluators": ("knn",),
}


# The official optimizer (sslModels.py l.270): weight decay on every parameter.
SGD = {
    "optimizer.name": "sgd",
    "optimizer.kwargs": {"momentum": 0.9, "exclude_bias_and_norm": False},
    "optimizer.weight_decay": 5e-4,
}


def _config(objective="barlow_twins", **overrides):
    return tiny_objective_config(objective, **{**POCON, **overrides})


def _setup(**overrides):
    config = objectives.resolve_config(_config(**overrides))
    objective = objectives.get_objective(config)
    strategy = strategies.get_strategy(config, objective)
    tx = step_lib.make_tx(config, objective, strategy)
    return config, objective, strategy, tx


def _perturbed(tree, seed):
    """``tree`` plus small noise: a network other than its initial draw."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    noisy = [
        x + 0.1 * jnp.abs(jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, noisy)


# ---------------------------------------------------------------------------------------------
# NumPy transcription of sslModels.py l.146-190 and utilsProj.prediction_mlp


def _np_normalize(x):
    """torch.nn.functional.normalize(x): x / max(||x||_2, 1e-12), row-wise."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _np_dist(a, b):
    """torch.dist(a, b): the 2-norm of all the elements of a - b."""
    return np.sqrt(np.sum((a - b) ** 2))


def _np_mlp(params, x, depth):
    """prediction_mlp in train mode: depth x (Linear, BatchNorm1d on the batch's statistics with
    the biased variance and eps 1e-5, ReLU), then Linear."""
    x = np.asarray(x, np.float64)
    for i in range(depth):
        lin, bn = params[f"linear{i}"], params[f"bn{i}"]
        x = x @ np.asarray(lin["kernel"], np.float64) + np.asarray(lin["bias"])
        x = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
        x = np.maximum(x * np.asarray(bn["scale"]) + np.asarray(bn["bias"]), 0.0)
    last = params[f"linear{depth}"]
    return x @ np.asarray(last["kernel"], np.float64) + np.asarray(last["bias"])


def _eval_features(objective, net, x):
    """A frozen network's backbone features in inference mode (``set_bn_eval``)."""

    def backbone(module, images):
        return module.backbone(images, train=False)

    return np.asarray(objective.model.apply(net, x, method=backbone), np.float64)


@pytest.mark.parametrize("task", [0, 1])
def test_adaptation_and_retrospection_terms_match_the_official_code(task):
    """lambda_a sum_v torch.dist(n(g_a(f^v)), n(expert^v)) + lambda_r (from the second task on)
    sum_v torch.dist(n(g_r(f^v)), n(old^v)): g_a the paper runs' prediction_mlp 3 in train mode,
    g_r the linear one, the expert and the old network in inference mode. The expert phase has
    no term."""
    config, objective, strategy, tx = _setup(
        **{"pocon.adaptation_weight": 1.5, "pocon.retrospection_weight": 25.0}
    )
    state = initial_state(objective, strategy, tx, random_split(8))
    rng = np.random.default_rng(1)
    width = output_widths(objective)["features"]
    views = tuple(jnp.asarray(rng.uniform(size=(8, 32, 32, 3)), jnp.float32) for _ in range(2))
    features = tuple(jnp.asarray(rng.normal(size=(8, width)), jnp.float32) for _ in range(2))
    frozen = {
        name: _perturbed(net, seed)
        for seed, (name, net) in enumerate(state.strategy.frozen.items())
    }
    trainable = state.strategy.trainable
    inputs = LossInputs(
        outputs=tuple({"features": f} for f in features),
        views=views,
        batch=None,
        params=state.params,
        trainable=trainable,
        state=state.strategy.replace(frozen=frozen),
        task=jnp.asarray(task),
        hyper={},
        phase=1,
    )
    value, terms = jax.jit(lambda: strategy.loss(inputs))()

    def term(head, depth, net):
        return sum(
            _np_dist(
                _np_normalize(_np_mlp(head, f, depth)),
                _np_normalize(_eval_features(objective, net, x)),
            )
            for f, x in zip(features, views, strict=True)
        )

    adapt = term(trainable["adaptation"], 3, frozen["expert"])
    retro = term(trainable["retrospection"], 0, frozen["main"]) if task else 0.0
    np.testing.assert_allclose(terms["adaptation"], adapt, rtol=2e-5)
    np.testing.assert_allclose(terms["retrospection"], retro, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(value, 1.5 * adapt + 25.0 * retro, rtol=2e-5)
    value, terms = strategy.loss(dataclasses.replace(inputs, phase=0))
    assert float(value) == 0.0 and terms == {}


# ---------------------------------------------------------------------------------------------
# The two phases in the step: what each trains


def _changed(before, after):
    """Per top-level key of two trees: whether any leaf under it differs."""
    return {
        key: any(
            not np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(before[key]), jax.tree.leaves(after[key]), strict=True)
        )
        for key in before
    }


def test_each_phase_trains_only_what_the_officials_optimizer_holds():
    """Expert phase (optimizer mode 0): the student (the expert's backbone and projector) moves
    under the Barlow Twins loss; g_a, g_r and their optimizer state do not. Adaptation phase
    (mode 1): the student's backbone (now the main network), g_a and, from the second task on,
    g_r move; the projector, its BatchNorm statistics and its optimizer state do not, and the
    loss is POCON's term alone. At the first task g_r rests, momentum included (no gradient).
    With the code's SGD and weight decay, a parameter left in a training group would move."""
    config, objective, strategy, tx = _setup(**SGD)
    state = initial_state(objective, strategy, tx, random_split(8))
    data, ids = jax.device_put(_train_data(8)), jnp.arange(8)
    steps = [
        jax.jit(
            step_lib.build_step_fn(
                objective, strategy, tx, extend=False, phase=i, with_objective=phase.objective
            )
        )
        for i, phase in enumerate(strategy.phases(1))
    ]
    for task in (0, 1):
        hyper = step_lib.stage_hyper(
            config,
            objective,
            strategy,
            num_epochs=2,
            steps_per_epoch=1,
            stage=task,
            phases=strategy.phases(task),
        )
        s = state.replace(task=jnp.asarray(task, jnp.int32))
        for phase, step in enumerate(steps):
            new, metrics = step(s, data, ids, {k: v[phase] for k, v in hyper.items()})
            moved = _changed(s.params, new.params)
            heads = _changed(s.strategy.trainable, new.strategy.trainable)
            # g_r's optimizer state (SGD's momentum; its hyperparameters are the step's to set).
            opt = _changed(
                {"opt": _momentum(s.opt_state, pocon_group("retrospection"))},
                {"opt": _momentum(new.opt_state, pocon_group("retrospection"))},
            )
            if phase == 0:
                assert moved == {"backbone": True, "projector": True}
                assert heads == {"adaptation": False, "retrospection": False}
                assert not opt["opt"] and "barlow_twins" in metrics
            else:
                assert moved == {"backbone": True, "projector": False}
                assert heads == {"adaptation": True, "retrospection": bool(task)}
                assert opt["opt"] == bool(task)
                assert "barlow_twins" not in metrics
                np.testing.assert_allclose(
                    metrics["loss"],
                    metrics["adaptation"] + 25.0 * metrics["retrospection"],
                    rtol=1e-6,
                )
                chex.assert_trees_all_equal(
                    s.batch_stats["projector"], new.batch_stats["projector"]
                )
            chex.assert_trees_all_equal(s.strategy.frozen, new.strategy.frozen)


def _momentum(opt_state, group):
    return opt_state.inner_states[group].inner_state.inner_state


def pocon_group(head):
    from cl_ssl.strategies import pocon

    return {"adaptation": pocon.ADAPTATION, "retrospection": pocon.RETROSPECTION}[head]


def _train_data(n):
    split = random_split(n)
    return TrainData(
        images=split.images,
        labels=split.labels,
        classes=split.labels,
        tasks=np.zeros(n, np.int32),
    )


# ---------------------------------------------------------------------------------------------
# The life cycle: the phase switch, the next expert, a run


def test_phase_switch_snapshots_the_expert_and_the_next_expert_starts_from_main():
    """At the phase switch the trained expert (its BatchNorm statistics too) is frozen, the main
    network takes the student's place, g_a is drawn afresh and g_r kept (copyOPscratch.py l.539,
    l.548, l.460); the projector stays. At the end of the task the main network becomes the old
    network, and the student, the main network, is the next expert (l.589)."""
    config, objective, strategy, tx = _setup()
    state = initial_state(objective, strategy, tx, random_split(8))
    trained = state.replace(
        params=_perturbed(state.params, 7), batch_stats=_perturbed(state.batch_stats, 8)
    )
    key = jax.random.PRNGKey(3)
    params, batch_stats, after = strategy.start_phase(
        PhaseStart(state=trained, stage=1, phase=1, key=key)
    )
    main = state.strategy.frozen["main"]
    chex.assert_trees_all_equal(params["backbone"], main["params"]["backbone"])
    chex.assert_trees_all_equal(batch_stats["backbone"], main["batch_stats"]["backbone"])
    chex.assert_trees_all_equal(params["projector"], trained.params["projector"])
    chex.assert_trees_all_equal(batch_stats["projector"], trained.batch_stats["projector"])
    chex.assert_trees_all_equal(
        after.frozen["expert"],
        {
            "params": {"backbone": trained.params["backbone"]},
            "batch_stats": {"backbone": trained.batch_stats["backbone"]},
        },
    )
    chex.assert_trees_all_equal(after.frozen["main"], main)
    # eval.network=expert scores the frozen expert.
    scored, stats = strategy.networks["expert"](trained.replace(strategy=after))
    chex.assert_trees_all_equal(scored["backbone"], trained.params["backbone"])
    chex.assert_trees_all_equal(stats["backbone"], trained.batch_stats["backbone"])
    chex.assert_trees_all_equal(
        after.trainable["retrospection"], state.strategy.trainable["retrospection"]
    )
    assert _changed(state.strategy.trainable, after.trainable)["adaptation"]
    adapted = trained.replace(
        params={**params, "backbone": _perturbed(params["backbone"], 9)},
        batch_stats=batch_stats,
        strategy=after,
    )
    end = TaskEnd(
        state=adapted,
        next_task=2,
        key=key,
        indices=np.arange(4),
        train=None,
        features=None,
        map_images=None,
    )
    nxt = strategy.end_task(end)
    chex.assert_trees_all_equal(
        nxt.frozen["main"]["params"]["backbone"], adapted.params["backbone"]
    )
    chex.assert_trees_all_equal(nxt.frozen["expert"], after.frozen["expert"])


def test_run_resumes_exactly_mid_phase(finished_run, tmp_path):
    """Two tasks (mock CIFAR-10 splits them 3 and 2 steps per epoch: 6 and 4 steps, the phase
    switches at their steps 3 and 2) compile two steps, each traced once for the whole run.
    Killed at step 3 (the checkpoint at the first task's phase switch, saved before it) and at
    step 9 (mid adaptation of the second task), the run ends as the uninterrupted one. Its
    student is then the main network, its old network a copy of it; eval.network=expert scores
    the experts from its checkpoints."""
    whole, whole_dir = finished_run(_config())
    assert whole["traces"] == [1, 1]
    workdir = tmp_path / "resumed"
    killed = run(_config(stop_after_steps=3), workdir)
    assert killed["stopped"] and (int(killed["state"].task), int(killed["state"].task_step)) == (
        0,
        3,
    )
    killed = run(_config(stop_after_steps=9), workdir)
    assert killed["stopped"] and (int(killed["state"].task), int(killed["state"].task_step)) == (
        1,
        3,
    )
    resumed = run(_config(), workdir)
    for field in ("params", "batch_stats", "strategy", "objective_state", "opt_state"):
        chex.assert_trees_all_equal(
            getattr(whole["state"], field), getattr(resumed["state"], field)
        )
    for name, matrix in whole["matrices"].items():
        np.testing.assert_array_equal(matrix, resumed["matrices"][name])
    final = whole["state"]
    chex.assert_trees_all_equal(
        final.strategy.frozen["main"]["params"]["backbone"], final.params["backbone"]
    )
    # The experts' accuracy matrix from the boundary checkpoints: the first expert starts as the
    # random student (row 0 alike), and the trained experts are not the main networks.
    experts = rescore.reevaluate(
        _config(**{"eval.network": "expert"}), str(whole_dir), "expert", parallel.make_mesh(1)
    )["knn"]
    np.testing.assert_array_equal(experts[0], whole["matrices"]["knn"][0])
    assert not np.array_equal(experts[1:], whole["matrices"]["knn"][1:])


# ---------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pocon.adaptation_epochs": 0}, "pocon.adaptation_epochs=0"),
        ({"pocon.first_adaptation_epochs": -1}, "pocon.first_adaptation_epochs=-1"),
        ({"pocon.first_task_epochs": 0}, "pocon.first_task_epochs=0"),
        ({"pocon.adaptation_weight": 0.0}, "pocon.adaptation_weight=0.0"),
        ({"pocon.retrospection_weight": float("nan")}, "pocon.retrospection_weight=nan"),
        ({"pocon.adaptation_projector": 5}, "pocon.adaptation_projector=5"),
        ({"optimizer.warmup_epochs": 1, "epochs_per_task": 2}, "raise pocon.adaptation_epochs"),
        ({"objective": "swav"}, "choose another --config.objective"),
    ],
)
def test_bad_settings_are_refused_before_compiling(overrides, message):
    config = objectives.resolve_config(_config(**overrides))
    objective = objectives.get_objective(config)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        strategies.get_strategy(config, objective)


@pytest.mark.parametrize(
    ("network", "message"), [("teacher", "names \\['expert'\\]"), ("expert", "eval.online=False")]
)
def test_the_scored_network_must_be_one_the_strategy_names(mock_cifar10, network, message):
    config = _config(**{"eval.network": network, "eval.online": network == "expert"})
    with pytest.raises(ValueError, match=message):
        planning.plan(objectives.resolve_config(config), parallel.make_mesh(1))


def test_preset_is_the_official_cifar100_run():
    """configs/cifar100.py:pocon: src/tests/wacv.py with sslModels.py's optimizer and loss."""
    config = objectives.resolve_config(shipped_config("cifar100", "pocon"))
    assert (config.strategy, config.objective, config.num_tasks) == ("pocon", "barlow_twins", 10)
    assert (config.barlow_twins.scale, config.barlow_twins.lambd) == (0.025, 0.0051)
    o = config.optimizer
    assert (o.name, o.lr, o.min_lr, o.weight_decay, o.warmup_epochs) == ("sgd", 0.01, 0.01, 5e-4, 0)
    assert not config.eval.online and config.dataset.holdout_fraction == 0.1
    objective = objectives.get_objective(config)
    strategy = strategies.get_strategy(config, objective)
    epochs = [[phase.epochs for phase in strategy.phases(t)] for t in (0, 1, 9)]
    assert epochs == [[500, 500], [500, 250], [500, 250]]
    assert [phase.objective for phase in strategy.phases(1)] == [True, False]


def test_preset_trains_on_nine_tenths_of_each_task(monkeypatch):
    """The official loaders shuffle the classes after ``np.random.seed(667)`` and hold 10% of
    every class out (FACIL's validation split): on a split of CIFAR-100's shape, each task of 10
    classes trains, and its probes fit, on 4,500 of its 5,000 images, 17 steps of 256 an
    epoch."""
    cifar100 = sources.ArraySplit(
        images=np.broadcast_to(np.zeros((1, 32, 32, 3), np.uint8), (50_000, 32, 32, 3)),
        labels=np.repeat(np.arange(100, dtype=np.int32), 500),
        num_classes=100,
    )
    monkeypatch.setattr(sources, "load_split", lambda *args, **kwargs: cifar100)
    p = planning.plan(shipped_config("cifar100", "pocon"), parallel.make_mesh(1))
    assert [(len(s.indices), s.steps_per_epoch) for s in p.stages] == [(4500, 17)] * 10
    np.random.seed(667)
    order = list(range(100))
    np.random.shuffle(order)  # the official code's draw, datasets/memory_dataset.py l.82
    assert [list(classes) for classes in p.scenario.task_classes] == [
        order[10 * t : 10 * t + 10] for t in range(10)
    ]
    for stage, indices in zip(p.stages, p.scenario.train_indices, strict=True):
        np.testing.assert_array_equal(stage.indices, indices)
        assert (np.bincount(cifar100.labels[indices], minlength=100) % 450 == 0).all()
