"""Pseudo-label selection strategies: hand-checked small tables, a reference check, the contract."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from mentor import SCORES_SCHEMA, SELECTION_SCHEMA
from mentor.registry import Registry
from mentor_plugins import selection

NAMES = ["top_k_per_class", "threshold", "balanced", "all"]


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    selection.register_selection_strategies(reg.registrar("selection", "selection", "mentor"))
    return reg


def build(registry: Registry, name: str, **params):
    """A strategy built the way a stage builds it: params validated by the registered model."""
    return registry.get("selection", name).build(**params)


# Six images, three classes, P=3, written as (index, [(class, prob) by rank]).
IMAGES = [
    (0, [(0, 0.60), (1, 0.30), (2, 0.10)]),
    (1, [(0, 0.50), (2, 0.40), (1, 0.10)]),
    (2, [(1, 0.70), (0, 0.20), (2, 0.10)]),
    (3, [(0, 0.50), (1, 0.45), (2, 0.05)]),  # ties image 1 for class 0 at 0.5
    (4, [(2, 0.80), (1, 0.15), (0, 0.05)]),
    (5, [(1, 0.40), (2, 0.35), (0, 0.25)]),
]


def scores_table(images=IMAGES) -> pl.DataFrame:
    rows = [(i, r, c, p) for i, ranked in images for r, (c, p) in enumerate(ranked)]
    return pl.DataFrame(rows, schema=SCORES_SCHEMA, orient="row")


def rows(df: pl.DataFrame) -> list[tuple]:
    """(index, label, prob, rank) tuples, prob rounded off its float32 noise."""
    return [(i, label, round(p, 6), r) for i, label, p, r in df.iter_rows()]


SCORES = scores_table()


# --- registration --------------------------------------------------------------


def test_registers_the_four_strategies_with_descriptions(registry):
    assert registry.names("selection") == sorted(NAMES)
    for name in NAMES:
        component = registry.get("selection", name)
        assert component.description and "\n" not in component.description


# --- top_k_per_class -------------------------------------------------------------


def test_top_k_per_class_picks_an_image_for_several_classes_and_breaks_ties_by_index(registry):
    out = build(registry, "top_k_per_class", k=2)(SCORES)
    assert rows(out) == [
        (0, 0, 0.6, 0), (1, 0, 0.5, 0),  # image 3 also has 0.5 for class 0: the smaller index wins
        (2, 1, 0.7, 0), (3, 1, 0.45, 1),
        (4, 2, 0.8, 0), (1, 2, 0.4, 1),  # image 1 again, for its rank-1 class
    ]


def test_top_k_per_class_with_p_considers_only_ranks_below_p(registry):
    # All ranks: class 0's 4th is image 5 at rank 2; class 2's 4th is a 0.1 tie of images 0 and 2 (rank 2).
    assert rows(build(registry, "top_k_per_class", k=4)(SCORES)) == [
        (0, 0, 0.6, 0), (1, 0, 0.5, 0), (3, 0, 0.5, 0), (5, 0, 0.25, 2),
        (2, 1, 0.7, 0), (3, 1, 0.45, 1), (5, 1, 0.4, 0), (0, 1, 0.3, 1),
        (4, 2, 0.8, 0), (1, 2, 0.4, 1), (5, 2, 0.35, 1), (0, 2, 0.1, 2),
    ]
    # p=2: rank-2 rows are out, so class 0 takes image 2 (rank 1) and class 2 has only three images.
    assert rows(build(registry, "top_k_per_class", k=4, p=2)(SCORES)) == [
        (0, 0, 0.6, 0), (1, 0, 0.5, 0), (3, 0, 0.5, 0), (2, 0, 0.2, 1),
        (2, 1, 0.7, 0), (3, 1, 0.45, 1), (5, 1, 0.4, 0), (0, 1, 0.3, 1),
        (4, 2, 0.8, 0), (1, 2, 0.4, 1), (5, 2, 0.35, 1),
    ]
    # p=1: hard labels only.
    assert rows(build(registry, "top_k_per_class", k=2, p=1)(SCORES)) == [
        (0, 0, 0.6, 0), (1, 0, 0.5, 0),
        (2, 1, 0.7, 0), (5, 1, 0.4, 0),
        (4, 2, 0.8, 0),
    ]


def test_top_k_per_class_with_k_above_every_class_size_keeps_every_row(registry):
    out = build(registry, "top_k_per_class", k=100)(SCORES)
    assert out.height == SCORES.height
    assert out.equals(out.sort(["label", "prob", "index"], descending=[False, True, False]))


def _reference_top_k(scores: pl.DataFrame, k: int, p: int | None) -> list[tuple]:
    """Plain Python: per class, sort by (prob desc, index asc) and keep k."""
    by_class: dict[int, list[tuple]] = {}
    for index, rank, cls, prob in scores.iter_rows():
        if p is None or rank < p:
            by_class.setdefault(cls, []).append((-prob, index, rank))
    out = []
    for cls in sorted(by_class):
        for neg_prob, index, rank in sorted(by_class[cls])[:k]:
            out.append((index, cls, -neg_prob, rank))
    return out


def _random_scores(images: int, classes: int, p: int, seed: int) -> pl.DataFrame:
    """Softmax top-p of random logits, probs rounded to 1/64 so that ties are common."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(images, classes)) + 3.0 * rng.random((images, 1)) * np.eye(classes)[
        rng.integers(0, classes, images)]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :p]
    top_probs = np.round(np.take_along_axis(probs, top, axis=1) * 64) / 64
    return pl.DataFrame(
        {
            "index": np.repeat(np.arange(images, dtype=np.int64), p),
            "rank": np.tile(np.arange(p, dtype=np.int8), images),
            "class": top.reshape(-1).astype(np.int32),
            "prob": top_probs.reshape(-1).astype(np.float32),
        },
        schema=SCORES_SCHEMA,
    )


@pytest.fixture(scope="module")
def medium() -> pl.DataFrame:
    return _random_scores(images=20_000, classes=10, p=3, seed=0)


@pytest.mark.parametrize(("k", "p"), [(1, None), (300, None), (300, 2), (2_000, 1), (10_000, None)])
def test_top_k_per_class_matches_a_reference_on_20k_images(registry, medium, k, p):
    out = build(registry, "top_k_per_class", k=k, p=p)(medium.sample(fraction=1.0, shuffle=True, seed=1))
    assert out.schema == pl.Schema(SELECTION_SCHEMA)
    assert list(out.iter_rows()) == _reference_top_k(medium, k, p)


# --- threshold -------------------------------------------------------------------


def test_threshold_keeps_confidence_equal_to_tau(registry):
    assert rows(build(registry, "threshold", tau=0.4)(SCORES)) == [
        (0, 0, 0.6, 0), (1, 0, 0.5, 0), (3, 0, 0.5, 0),
        (2, 1, 0.7, 0), (5, 1, 0.4, 0),  # confidence == tau: kept
        (4, 2, 0.8, 0),
    ]
    assert rows(build(registry, "threshold", tau=0.41)(SCORES)) == [
        (0, 0, 0.6, 0), (1, 0, 0.5, 0), (3, 0, 0.5, 0),
        (2, 1, 0.7, 0),
        (4, 2, 0.8, 0),
    ]


def test_threshold_compares_at_the_tables_float32_precision(registry):
    # float32(0.45) < 0.45 as a double: the row is still kept.
    out = build(registry, "threshold", tau=0.45, top_only=False)(SCORES)
    assert (3, 1, 0.45, 1) in rows(out)


def test_threshold_not_top_only_keeps_every_class_above_tau(registry):
    assert rows(build(registry, "threshold", tau=0.4, top_only=False)(SCORES)) == [
        (0, 0, 0.6, 0), (1, 0, 0.5, 0), (3, 0, 0.5, 0),
        (2, 1, 0.7, 0), (3, 1, 0.45, 1), (5, 1, 0.4, 0),
        (4, 2, 0.8, 0), (1, 2, 0.4, 1),
    ]


def test_threshold_extremes(registry):
    assert build(registry, "threshold", tau=0.0, top_only=False)(SCORES).height == SCORES.height
    assert build(registry, "threshold", tau=0.0)(SCORES).height == len(IMAGES)
    none = build(registry, "threshold", tau=1.0)(SCORES)
    assert none.height == 0 and none.schema == pl.Schema(SELECTION_SCHEMA)


# --- balanced --------------------------------------------------------------------


def test_balanced_subsamples_full_classes_and_duplicates_short_ones(registry):
    # Hard labels: class 0 has images 0 (0.6), 1 (0.5), 3 (0.5); class 1 has 2 (0.7), 5 (0.4); class 2 has 4.
    assert rows(build(registry, "balanced", per_class=2)(SCORES)) == [
        (0, 0, 0.6, 0), (1, 0, 0.5, 0),  # image 3 loses the 0.5 tie to image 1
        (2, 1, 0.7, 0), (5, 1, 0.4, 0),
        (4, 2, 0.8, 0), (4, 2, 0.8, 0),
    ]


def test_balanced_duplicates_cyclically_in_confidence_order(registry):
    # per_class=5: class 0 cycles 0,1,3,0,1; class 1 cycles 2,5,2,5,2; class 2 is image 4 five times.
    # Copies are adjacent, keeping the (label, prob desc, index asc) order.
    assert rows(build(registry, "balanced", per_class=5)(SCORES)) == [
        (0, 0, 0.6, 0), (0, 0, 0.6, 0), (1, 0, 0.5, 0), (1, 0, 0.5, 0), (3, 0, 0.5, 0),
        (2, 1, 0.7, 0), (2, 1, 0.7, 0), (2, 1, 0.7, 0), (5, 1, 0.4, 0), (5, 1, 0.4, 0),
        (4, 2, 0.8, 0), (4, 2, 0.8, 0), (4, 2, 0.8, 0), (4, 2, 0.8, 0), (4, 2, 0.8, 0),
    ]


def test_balanced_min_confidence_drops_first_and_empty_classes_stay_absent(registry):
    assert rows(build(registry, "balanced", per_class=2, min_confidence=0.5)(SCORES)) == [
        (0, 0, 0.6, 0), (1, 0, 0.5, 0),  # 0.5 == min_confidence: kept
        (2, 1, 0.7, 0), (2, 1, 0.7, 0),  # image 5 (0.4) dropped, image 2 duplicated
        (4, 2, 0.8, 0), (4, 2, 0.8, 0),
    ]
    assert rows(build(registry, "balanced", per_class=3, min_confidence=0.75)(SCORES)) == [
        (4, 2, 0.8, 0), (4, 2, 0.8, 0), (4, 2, 0.8, 0),  # classes 0 and 1 have nothing left
    ]


def test_balanced_matches_a_cyclic_reference_on_20k_images(registry, medium):
    per_class, min_conf = 1_000, 0.25
    out = build(registry, "balanced", per_class=per_class, min_confidence=min_conf)(medium)
    expected = []
    top = medium.filter(pl.col("rank") == 0)
    for cls in sorted(set(top["class"].to_list())):
        kept = sorted((-p, i) for i, r, c, p in top.iter_rows() if c == cls and p >= min_conf)
        if kept:
            picked = [kept[j % len(kept)] for j in range(per_class)]
            expected += [(i, cls, -neg_p, 0) for neg_p, i in sorted(picked)]
    assert list(out.iter_rows()) == expected
    assert out.group_by("label").len()["len"].to_list() == [per_class] * out["label"].n_unique()


# --- all -------------------------------------------------------------------------


def test_all_is_every_image_with_its_top_class(registry):
    assert rows(build(registry, "all")(SCORES)) == [
        (0, 0, 0.6, 0), (1, 0, 0.5, 0), (3, 0, 0.5, 0),
        (2, 1, 0.7, 0), (5, 1, 0.4, 0),
        (4, 2, 0.8, 0),
    ]


# --- the contract, for every strategy ----------------------------------------------

CASES = [
    ("top_k_per_class", {"k": 2}),
    ("top_k_per_class", {"k": 3, "p": 2}),
    ("threshold", {"tau": 0.3}),
    ("threshold", {"tau": 0.1, "top_only": False}),
    ("balanced", {"per_class": 3}),
    ("balanced", {"per_class": 50, "min_confidence": 0.3}),
    ("all", {}),
]


@pytest.mark.parametrize(("name", "params"), CASES)
def test_output_dtypes_and_column_order(registry, name, params):
    out = build(registry, name, **params)(SCORES)
    assert out.height > 0
    assert out.schema == pl.Schema(SELECTION_SCHEMA)
    assert out.columns == ["index", "label", "prob", "rank"]


@pytest.mark.parametrize(("name", "params"), CASES)
def test_shuffled_input_gives_identical_output(registry, medium, name, params):
    strategy = build(registry, name, **params)
    for table in (SCORES, medium):
        expected = strategy(table)
        assert expected.equals(expected.sort(["label", "prob", "index"], descending=[False, True, False]))
        for seed in (1, 2):
            assert strategy(table.sample(fraction=1.0, shuffle=True, seed=seed)).equals(expected)


@pytest.mark.parametrize(("name", "params"), CASES)
def test_empty_input_gives_empty_output_with_the_schema(registry, name, params):
    out = build(registry, name, **params)(pl.DataFrame(schema=SCORES_SCHEMA))
    assert out.height == 0
    assert out.schema == pl.Schema(SELECTION_SCHEMA)


def test_input_dtypes_are_coerced_to_the_contract(registry):
    loose = SCORES.with_columns(pl.col("rank").cast(pl.Int64), pl.col("class").cast(pl.Int64),
                                pl.col("prob").cast(pl.Float64), pl.col("index").cast(pl.Int32))
    for name, params in CASES:
        strategy = build(registry, name, **params)
        assert strategy(loose).schema == pl.Schema(SELECTION_SCHEMA)


def test_missing_column_is_a_clear_error(registry):
    with pytest.raises(ValueError, match="prob"):
        build(registry, "all")(SCORES.drop("prob"))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("top_k_per_class", {}),
        ("top_k_per_class", {"k": 0}),
        ("top_k_per_class", {"k": 5, "p": 0}),
        ("top_k_per_class", {"k": "many"}),
        ("top_k_per_class", {"k": 5, "top_p": 3}),
        ("threshold", {}),
        ("threshold", {"tau": 1.5}),
        ("threshold", {"tau": -0.1}),
        ("balanced", {"per_class": 0}),
        ("balanced", {"per_class": 10, "min_confidence": 1.01}),
        ("all", {"k": 1}),
    ],
)
def test_invalid_params_are_validation_errors(registry, name, params):
    with pytest.raises(ValidationError):
        build(registry, name, **params)
