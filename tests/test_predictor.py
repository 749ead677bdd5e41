"""The ratio-to-alpha predictor, its band, its reference data and the draft choice."""

import json

import numpy as np
import pytest
import torch
from conftest import VOCAB, make_model

from hybridspec_lite.metrics import ideal_speedup
from hybridspec_lite.predictor import (
    COMPONENT,
    EARLY_EXIT,
    STUDY_REFERENCE_POINTS,
    FitPoint,
    break_even_alpha,
    estimate_cost_ratio,
    fit_alpha_mapping,
    format_prediction,
    load_fit_points,
    predict_for_model,
    recommend_draft,
    save_fit_points,
)

# Made-up measurements with one monotonicity violation (ratio 2 -> 0.55, ratio 3 -> 0.6).
POINTS = [
    FitPoint(ratio=1.1, alpha=0.85, k=4, label="a"),
    FitPoint(ratio=2.0, alpha=0.55, k=4, label="b"),
    FitPoint(ratio=3.0, alpha=0.60, k=4, label="c"),
    FitPoint(ratio=12.0, alpha=0.15, k=4, label="d"),
    FitPoint(ratio=40.0, alpha=0.05, k=4, label="e"),
    FitPoint(ratio=1.5, alpha=0.7, k=2, label="f"),
    FitPoint(ratio=20.0, alpha=0.1, k=2, label="g"),
]


def test_mapping_is_non_increasing():
    mapping = fit_alpha_mapping(POINTS)
    ratios = np.geomspace(0.5, 100.0, 200)

    for k in (2, 4):
        predictions = mapping.predict_many(ratios, k)
        for column in ("alpha", "low", "high"):
            values = np.array([getattr(p, column) for p in predictions])
            assert np.all(np.diff(values) <= 1e-12), f"{column} at k={k} increases"
            assert np.all((values >= 0.0) & (values <= 1.0))


def test_band_contains_fitting_points():
    for points in (POINTS, STUDY_REFERENCE_POINTS, POINTS + list(STUDY_REFERENCE_POINTS)):
        mapping = fit_alpha_mapping(points)
        for point in points:
            prediction = mapping.predict(point.ratio, point.k)
            assert prediction.low <= point.alpha <= prediction.high, point
            assert prediction.low <= prediction.alpha <= prediction.high, point


def test_band_nonzero_for_consistent_points():
    consistent = [FitPoint(1.0, 0.9, 4), FitPoint(3.0, 0.5, 4), FitPoint(30.0, 0.1, 4)]
    prediction = fit_alpha_mapping(consistent).predict(3.0, 4)

    # The in-sample fit passes through every point; the leave-one-out residuals widen it.
    assert prediction.alpha == pytest.approx(0.5)
    assert prediction.high - prediction.low > 0.1


def test_reference_points_only_when_requested():
    mine = POINTS[:2]
    assert fit_alpha_mapping(mine).points == tuple(mine)

    with_reference = fit_alpha_mapping(mine, include_reference=True).points
    assert with_reference == tuple(mine) + STUDY_REFERENCE_POINTS
    for point in STUDY_REFERENCE_POINTS:
        assert point.source.startswith("Borobia et al.")
        assert point.k == 4

    reference_only = fit_alpha_mapping([], include_reference=True)
    assert reference_only.predict(3.15, 4).alpha == pytest.approx(0.37)
    assert reference_only.predict(81.96, 4).alpha == pytest.approx(0.019)


def test_extrapolation_is_flagged():
    mapping = fit_alpha_mapping(STUDY_REFERENCE_POINTS)

    assert mapping.predict(10.0, 4).extrapolated is False
    assert mapping.predict(1.2, 4).extrapolated is True
    assert mapping.predict(1.2, 4).alpha == pytest.approx(0.37)


@pytest.mark.parametrize(
    "points,message",
    [
        ([FitPoint(2.0, 0.5, 4)], "k=4: 1 point"),
        ([], "no fitting points"),
        ([FitPoint(2.0, 0.5, 4), FitPoint(3.0, 0.4, 4), FitPoint(5.0, 0.3, 2)], "k=2: 1 point"),
    ],
)
def test_too_few_points_raise(points, message):
    with pytest.raises(ValueError, match=message):
        fit_alpha_mapping(points)


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(ratio=2.0, alpha=1.5, k=4), "alpha 1.5"),
        (dict(ratio=2.0, alpha=-0.1, k=4), "alpha -0.1"),
        (dict(ratio=2.0, alpha=float("nan"), k=4), "alpha nan"),
        (dict(ratio=0.0, alpha=0.5, k=4), "ratio 0.0"),
        (dict(ratio=-3.0, alpha=0.5, k=4), "ratio -3.0"),
        (dict(ratio=float("inf"), alpha=0.5, k=4), "ratio inf"),
        (dict(ratio=2.0, alpha=0.5, k=0), "k 0"),
    ],
)
def test_invalid_point_raises(fields, message):
    with pytest.raises(ValueError, match=message):
        FitPoint(**fields)


def test_predict_invalid_ratio_raises():
    mapping = fit_alpha_mapping(POINTS)
    with pytest.raises(ValueError, match="ratio -1"):
        mapping.predict(-1.0, 4)
    with pytest.raises(ValueError, match="k=3"):
        mapping.predict(2.0, 3)


def test_fit_points_round_trip(tmp_path):
    path = tmp_path / "points.json"
    save_fit_points(POINTS, path)

    assert load_fit_points(path) == POINTS
    path.write_text(json.dumps([{"ratio": 2.0, "k": 4}]))
    with pytest.raises(ValueError, match="missing \\['alpha'\\]"):
        load_fit_points(path)


@pytest.mark.parametrize("k,cost_ratio", [(1, 0.3), (4, 0.5), (4, 0.9), (8, 0.1)])
def test_break_even_alpha_gives_unit_speedup(k, cost_ratio):
    alpha = break_even_alpha(k, cost_ratio)

    assert 0.0 < alpha < 1.0
    assert ideal_speedup(alpha, k, cost_ratio) == pytest.approx(1.0, abs=1e-9)


def test_recommendation_rules():
    threshold = break_even_alpha(4, 0.5)
    assert recommend_draft(threshold + 0.01, 4, 0.5).draft == COMPONENT
    assert recommend_draft(threshold - 0.01, 4, 0.5).draft == EARLY_EXIT
    assert break_even_alpha(4, 1.0) == 1.0
    assert recommend_draft(1.0, 4, 1.0).draft == EARLY_EXIT

    # With an early-exit alpha, the larger ideal speedup decides.
    assert recommend_draft(0.3, 4, 0.5, alpha_early_exit=0.4).draft == EARLY_EXIT
    assert recommend_draft(0.5, 4, 0.5, alpha_early_exit=0.4).draft == COMPONENT
    cheap_early_exit = recommend_draft(0.5, 4, 0.6, alpha_early_exit=0.45, cost_ratio_early_exit=0.2)
    assert cheap_early_exit.draft == EARLY_EXIT
    assert cheap_early_exit.speedup_early_exit > cheap_early_exit.speedup_component

    with pytest.raises(ValueError, match="alpha_early_exit must be in \\[0, 1\\], got 2"):
        recommend_draft(0.5, 4, 0.5, alpha_early_exit=2)
    with pytest.raises(ValueError, match="cost ratio .* got -0.5"):
        recommend_draft(0.5, 4, -0.5)


def test_cost_ratio_estimate_is_a_fraction():
    for family in ("falcon_h1", "qwen3_5"):
        ratio = estimate_cost_ratio(make_model(family))
        assert 0.0 < ratio < 1.0, family


def test_predict_for_model_result():
    model = make_model("falcon_h1")
    tokens = torch.randint(2, VOCAB, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    result = predict_for_model(
        model, tokens, 4, include_reference=True, cost_ratio=0.5, window=16, stride=8, progress=False
    )

    assert result["family"] == "falcon_h1"
    assert result["ratio"] == pytest.approx(result["perplexity_ablated"] / result["perplexity_full"])
    assert result["alpha_low"] <= result["alpha"] <= result["alpha_high"]
    assert result["recommended_draft"] in (COMPONENT, EARLY_EXIT)
    assert len(result["fit_points"]) == 2
    assert json.loads(json.dumps(result)) == result

    text = format_prediction(result)
    print(text)
    assert "recommended draft" in text
    assert "reference data reported by Borobia et al." in text


def test_predict_for_model_needs_fit_points():
    model = make_model("falcon_h1")
    with pytest.raises(ValueError, match="no fitting points"):
        predict_for_model(model, list(range(2, 30)), 4, window=16, stride=8, progress=False)
    with pytest.raises(ValueError, match="early-exit"):
        predict_for_model(make_model("qwen2"), list(range(2, 30)), 4, include_reference=True, progress=False)
