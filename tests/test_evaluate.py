"""The evaluator: which examples train the probes (all, seen or current tasks, a label fraction,
a cap), the classifier, task-aware and domain-aware accuracy matrices against hand-made cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_split, tiny_config

from cl_ssl import config as config_lib
from cl_ssl import objectives, parallel
from cl_ssl.data import scenarios
from cl_ssl.data.sources import ArraySplit
from cl_ssl.evaluation import evaluate

# 40 training images, labels cycling over 4 classes; task 1 holds classes {0, 1}, task 2 {2, 3}.
TRAIN, TEST = random_split(40), random_split(8, seed=5)
SCENARIO = scenarios.make_scenario(
    "class_incremental", TRAIN.labels, TEST.labels, num_classes=4, num_tasks=2
)


def _evaluator(classify=None, model=None, train=TRAIN, test=TEST, scenario=SCENARIO, **eval_fields):
    config = objectives.resolve_config(
        tiny_config(
            **{"eval.evaluators": ("knn",), **{f"eval.{k}": v for k, v in eval_fields.items()}}
        )
    )
    objective = objectives.get_objective(config)
    evaluator = evaluate.Evaluator(
        model or objective.model,
        train,
        test,
        scenario,
        config,
        parallel.make_mesh(1),
        key=jax.random.PRNGKey(0),
        classify=classify,
    )
    return evaluator, objective


@pytest.mark.parametrize(
    "probe_data, rows_by_stage",
    [
        ("all", {0: range(40), 1: range(40), 2: range(40)}),
        ("seen", {0: "task1", 1: "task1", 2: range(40)}),
        ("current", {0: "task1", 1: "task1", 2: "task2"}),
    ],
)
def test_probe_data_sources(probe_data, rows_by_stage):
    evaluator, _ = _evaluator(probe_data=probe_data)
    tasks = {"task1": SCENARIO.train_indices[0], "task2": SCENARIO.train_indices[1]}
    for stage, rows in rows_by_stage.items():
        expected = tasks[rows] if isinstance(rows, str) else np.arange(40)
        np.testing.assert_array_equal(evaluator.probe_examples(stage), expected)


def test_no_probe_trains_on_held_out_images():
    """``dataset.holdout_fraction`` thins every task (one image of each class's 10 here); the
    probes of every ``probe_data`` draw from what is left."""
    thinned = scenarios.hold_out(SCENARIO, TRAIN.labels, fraction=0.1, seed=0)
    kept = np.concatenate(thinned.train_indices)
    assert len(kept) == 36
    for probe_data in evaluate.PROBE_DATA:
        evaluator, _ = _evaluator(scenario=thinned, probe_data=probe_data)
        for stage in (0, 1, 2):
            assert set(evaluator.probe_examples(stage)) <= set(kept)
    everything, _ = _evaluator(scenario=thinned)
    np.testing.assert_array_equal(everything.probe_examples(2), np.sort(kept))


def test_online_data_chooses_the_online_probes_pool_apart_from_the_probes():
    """``eval.online_data='seen'`` (Kaizen's) during stage 1 draws from task 1 only, then from
    both tasks, while the offline probes keep ``eval.probe_data='all'``; the train loop asks for
    row s + 1's pool during stage s."""
    evaluator, _ = _evaluator(probe_data="all", online_data="seen")
    task1 = SCENARIO.train_indices[0]
    np.testing.assert_array_equal(evaluator.probe_pool(1, "seen"), task1)
    np.testing.assert_array_equal(evaluator.probe_pool(2, "seen"), np.arange(40))
    np.testing.assert_array_equal(evaluator.probe_pool(1), np.arange(40))


def test_label_fraction_is_class_balanced_within_the_probe_data_then_capped():
    evaluator, _ = _evaluator(probe_data="current", label_fraction=0.2)
    rows = evaluator.probe_examples(2)
    # Task 2: classes 2 and 3, 10 images each; 20% of each.
    assert sorted(TRAIN.labels[rows].tolist()) == [2, 2, 3, 3]
    capped, _ = _evaluator(probe_data="current", label_fraction=0.2, train_examples=3)
    kept = capped.probe_examples(2)
    assert len(kept) == 3 and set(kept) <= set(rows)


def test_classifier_and_task_aware_matrices_by_hand():
    """'Logits' with a top and a second choice per test image (labels 0, 1, 2, 3, 0, 1, 2, 3; task 1
    holds rows 0, 1, 4, 5, task 2 rows 2, 3, 6, 7). Rows 1 and 3 put another task's class first and
    their own label second, row 6 a wrong class of its own task first. With 4 classes every label
    is among the top 5."""
    top = np.array([0, 2, 2, 1, 0, 1, 3, 3])
    second = np.array([1, 1, 3, 3, 1, 0, 0, 2])
    assert SCENARIO.task_classes == ((0, 1), (2, 3))
    logits = jnp.eye(4)[top] + 0.5 * jnp.eye(4)[second]
    evaluator, objective = _evaluator(
        classify=lambda logits, features: logits[: features.shape[0]], task_aware=True, top5=True
    )
    assert evaluator.names == [
        "knn",
        "classifier",
        "knn_task_aware",
        "classifier_task_aware",
        "knn_top5",
        "classifier_top5",
    ]
    variables = objective.model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)
    accuracy = evaluator(variables["params"], variables["batch_stats"], logits, stage=1)
    assert set(accuracy) == set(evaluator.names)
    np.testing.assert_allclose(accuracy["classifier"], [75.0, 50.0])  # rows 1 | 3, 6 wrong
    np.testing.assert_allclose(accuracy["classifier_task_aware"], [100.0, 75.0])  # row 6 wrong
    assert np.all(accuracy["knn_task_aware"] >= accuracy["knn"])
    np.testing.assert_array_equal(accuracy["classifier_top5"], [100.0, 100.0])
    np.testing.assert_array_equal(accuracy["knn_top5"], [100.0, 100.0])


class _FirstPixel:
    """A stand-in backbone whose features are the normalised first pixel's 3 channels."""

    features = "features"

    def apply(self, variables, x, method):
        return x[:, 0, 0, :]


def test_domain_aware_probes_train_on_their_own_domain_alone():
    """Two domains with the same two classes, whose first pixel codes the class in opposite ways:
    class 0 is bright in domain 1 and dark in domain 2. A probe per domain separates each domain's
    classes exactly; a probe of both domains sees the same feature under both labels and cannot
    score both domains right: whatever it predicts for a feature, it is right on half the test
    images."""
    train_classes = np.array([0, 1, 0, 1] * 6)
    train_domains = np.repeat([0, 1], 12)
    test_classes, test_domains = np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])

    def images(classes, domains):
        x = np.full((len(classes), 32, 32, 3), 128, np.uint8)
        x[:, 0, 0, 0] = np.where(classes == domains, 255, 0)
        return x

    train = ArraySplit(images(train_classes, train_domains), train_classes, num_classes=2)
    test = ArraySplit(images(test_classes, test_domains), test_classes, num_classes=2)
    scenario = scenarios.make_scenario(
        "domain_incremental",
        train.labels,
        test.labels,
        num_classes=2,
        num_tasks=2,
        train_domains=train_domains,
        test_domains=test_domains,
    )
    evaluator, _ = _evaluator(
        model=_FirstPixel(),
        train=train,
        test=test,
        scenario=scenario,
        evaluators=("linear", "knn"),
        domain_aware=True,
    )
    assert evaluator.names == ["linear", "knn", "linear_domain_aware", "knn_domain_aware"]
    accuracy = evaluator({}, {}, stage=1)
    np.testing.assert_array_equal(accuracy["linear_domain_aware"], [100.0, 100.0])
    np.testing.assert_array_equal(accuracy["knn_domain_aware"], [100.0, 100.0])
    for agnostic in ("linear", "knn"):
        assert accuracy[agnostic].mean() == 50.0, agnostic


def test_domain_aware_evaluation_needs_a_domain_incremental_run_on_all_data():
    config = tiny_config(**{"eval.domain_aware": True})
    with pytest.raises(ValueError, match="scenario='domain_incremental'"):
        config_lib.validate(objectives.resolve_config(config), num_devices=1)
