"""Predict the component draft's acceptance rate from an attention-ablation perplexity ratio.

The attention ablation's perplexity ratio PPL(attention removed) / PPL(full) (see
``perplexity.ablation_ratio``) costs one evaluation pass, while an acceptance rate alpha
needs a speculative decoding run. From measured (ratio, alpha) points at one number of
draft tokens k, ``fit_alpha_mapping`` fits an isotonic regression of alpha on log(ratio),
constrained to be non-increasing: a draft that models the text worse is accepted less.

Uncertainty interval: a jackknife band. The band runs from the fitted value plus the
smallest residual to the fitted value plus the largest residual. The residuals are those of
the fit on all points and the leave-one-out residuals, where each point is predicted by the
fit on the others. The band therefore contains every fitting point, and it shows how far a
point lies from what the others predict. It has no stated coverage probability: with a handful
of points it is a spread, not a confidence interval.

The study's two published points are kept in ``STUDY_REFERENCE_POINTS``. They are
reference data, not results of this library, and enter a fit only with
``include_reference=True``.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression

from .adapters import get_adapter
from .metrics import ideal_speedup
from .perplexity import DEFAULT_STRIDE, DEFAULT_WINDOW, evaluate_ablation

# Points measured with this library on the tiny zoo (scripts/measure_fit_points.py writes
# them); the CLI fits on them by default.
DEFAULT_FIT_POINTS_FILE = Path(__file__).resolve().parent / "resources" / "fit_points.json"

STUDY_SOURCE = (
    "Borobia et al., Component-Aware Self-Speculative Decoding in Hybrid Language Models, "
    "arXiv 2605.01106, 2026"
)

INTERVAL_METHOD = "jackknife band: fit plus the min/max of in-sample and leave-one-out residuals"

COMPONENT = "component"
EARLY_EXIT = "early-exit"


def validate_point(point: FitPoint) -> None:
    """Raise ValueError, naming the value, unless ratio > 0, 0 <= alpha <= 1 and k >= 1."""
    name = f" ({point.label})" if point.label else ""
    if not (isinstance(point.ratio, numbers.Real) and math.isfinite(point.ratio) and point.ratio > 0):
        raise ValueError(f"invalid perplexity ratio {point.ratio!r}{name}: it must be a finite number > 0")
    if not (isinstance(point.alpha, numbers.Real) and 0.0 <= point.alpha <= 1.0):
        raise ValueError(f"invalid acceptance rate alpha {point.alpha!r}{name}: it must be in [0, 1]")
    if isinstance(point.k, bool) or not isinstance(point.k, int) or point.k < 1:
        raise ValueError(f"invalid k {point.k!r}{name}: the number of draft tokens must be an integer >= 1")


@dataclass(frozen=True)
class FitPoint:
    """One measured pair: the attention-ablation perplexity ratio and the acceptance rate at k."""

    ratio: float  # PPL(attention removed) / PPL(full), > 0
    alpha: float  # acceptance rate of the component draft, in [0, 1]
    k: int  # draft tokens per round
    label: str = ""  # model and data set, for printouts
    source: str = ""  # who measured it; empty for the caller's own measurements

    def __post_init__(self):
        validate_point(self)


# Reported by STUDY_SOURCE for WikiText-2 under greedy decoding. Reference data only.
STUDY_REFERENCE_POINTS: tuple[FitPoint, ...] = (
    FitPoint(ratio=3.15, alpha=0.37, k=4, label="Falcon-H1-0.5B, WikiText-2, greedy", source=STUDY_SOURCE),
    FitPoint(ratio=81.96, alpha=0.019, k=4, label="Qwen3.5-0.8B, WikiText-2, greedy", source=STUDY_SOURCE),
)


@dataclass(frozen=True)
class AlphaPrediction:
    """Predicted acceptance rate at one perplexity ratio, with its jackknife band."""

    ratio: float
    k: int
    alpha: float
    low: float
    high: float
    num_points: int  # fitting points at this k
    extrapolated: bool  # ratio outside the fitting points' range: alpha is the nearest end value


def _isotonic(log_ratios: np.ndarray, alphas: np.ndarray) -> IsotonicRegression:
    model = IsotonicRegression(increasing=False, y_min=0.0, y_max=1.0, out_of_bounds="clip")
    return model.fit(log_ratios, alphas)


class _MappingAtK:
    """The isotonic fit and residual band of the points at one k."""

    def __init__(self, points: Sequence[FitPoint]):
        self.points = tuple(points)
        x = np.log([p.ratio for p in points])
        y = np.array([p.alpha for p in points], dtype=float)
        self.model = _isotonic(x, y)
        residuals = list(y - self.model.predict(x))
        for i in range(len(points)):
            others = np.arange(len(points)) != i
            residuals.append(y[i] - _isotonic(x[others], y[others]).predict(x[i : i + 1])[0])
        self.residual_low = min(0.0, min(residuals))
        self.residual_high = max(0.0, max(residuals))

    def predict(self, log_ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        alpha = self.model.predict(log_ratios)
        low = np.clip(alpha + self.residual_low, 0.0, 1.0)
        high = np.clip(alpha + self.residual_high, 0.0, 1.0)
        return alpha, low, high


class AlphaMapping:
    """Non-increasing mappings from log perplexity ratio to alpha, one per k.

    Between fitting points the prediction interpolates linearly in log ratio. Outside
    their range it stays at the nearest end value.
    """

    # NOTE: beyond the fitted ratio range the band keeps its in-range width, although the
    # error of a flat extrapolation can be larger there.

    def __init__(self, points: Sequence[FitPoint]):
        self.points = tuple(points)
        by_k: dict[int, list[FitPoint]] = {}
        for point in self.points:
            by_k.setdefault(point.k, []).append(point)
        self._fits = {k: _MappingAtK(group) for k, group in sorted(by_k.items())}

    @property
    def ks(self) -> list[int]:
        """Draft lengths k with a fitted mapping."""
        return list(self._fits)

    def _fit_for(self, k: int) -> _MappingAtK:
        if k not in self._fits:
            raise ValueError(f"no fitting points at k={k}: the mapping has points at k in {self.ks}")
        return self._fits[k]

    def points_at(self, k: int) -> tuple[FitPoint, ...]:
        """Return the fitting points at ``k``."""
        return self._fit_for(k).points

    def predict(self, ratio: float, k: int) -> AlphaPrediction:
        """Predict alpha at one perplexity ratio for ``k`` draft tokens."""
        validate_point(FitPoint(ratio=ratio, alpha=0.0, k=k))
        fit = self._fit_for(k)
        alpha, low, high = fit.predict(np.log([ratio]))
        fitted_ratios = [p.ratio for p in fit.points]
        return AlphaPrediction(
            ratio=float(ratio),
            k=k,
            alpha=float(alpha[0]),
            low=float(low[0]),
            high=float(high[0]),
            num_points=len(fit.points),
            extrapolated=not min(fitted_ratios) <= ratio <= max(fitted_ratios),
        )

    def predict_many(self, ratios: Iterable[float], k: int) -> list[AlphaPrediction]:
        """Predict alpha at several ratios for ``k`` draft tokens."""
        return [self.predict(ratio, k) for ratio in ratios]


def fit_alpha_mapping(points: Iterable[FitPoint], *, include_reference: bool = False) -> AlphaMapping:
    """Fit alpha as a non-increasing function of log(ratio) for each k in ``points``.

    ``include_reference=True`` adds ``STUDY_REFERENCE_POINTS`` to the caller's points.

    Raises:
        ValueError: on an invalid point, or when some k has fewer than two points.
    """
    points = list(points)
    if include_reference:
        points += STUDY_REFERENCE_POINTS
    counts: dict[int, int] = {}
    for point in points:
        counts[point.k] = counts.get(point.k, 0) + 1
    if not counts:
        raise ValueError("no fitting points: pass at least two (ratio, alpha, k) points, or include_reference=True")
    too_few = {k: n for k, n in counts.items() if n < 2}
    if too_few:
        detail = ", ".join(f"k={k}: {n} point" for k, n in sorted(too_few.items()))
        raise ValueError(f"at least two fitting points are needed per k, got {detail}")
    return AlphaMapping(points)


def load_fit_points(path: str | Path) -> list[FitPoint]:
    """Read fitting points from a JSON list of objects with ratio, alpha, k and optional label, source."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of points, got {type(records).__name__}")
    points = []
    for i, record in enumerate(records):
        missing = {"ratio", "alpha", "k"} - set(record)
        if missing:
            raise ValueError(f"{path}: point {i} is missing {sorted(missing)}")
        points.append(FitPoint(**record))
    return points


def save_fit_points(points: Iterable[FitPoint], path: str | Path) -> None:
    """Write fitting points as the JSON list that ``load_fit_points`` reads."""
    Path(path).write_text(json.dumps([asdict(p) for p in points], indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------
# Draft choice


def break_even_alpha(k: int, cost_ratio: float) -> float:
    """Return the alpha at which the ideal speedup S(alpha, k, c) equals 1.

    S = (1 - a^(k+1)) / ((1 - a)(k c + 1)) (``metrics.ideal_speedup``) increases with a from
    1 / (k c + 1) at a = 0 to (k + 1) / (k c + 1) at a = 1, so the break-even point exists
    for 0 < c < 1 and is found by bisection. It is 0 for c = 0 and 1 for c >= 1.
    """
    _check_k_cost(k, cost_ratio)
    if cost_ratio == 0:
        return 0.0
    if cost_ratio >= 1:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if ideal_speedup(middle, k, cost_ratio) < 1.0:
            low = middle
        else:
            high = middle
    return high


def _check_k_cost(k: int, cost_ratio: float) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not (math.isfinite(cost_ratio) and cost_ratio >= 0):
        raise ValueError(f"draft cost ratio must be a finite number >= 0, got {cost_ratio}")


@dataclass(frozen=True)
class DraftRecommendation:
    """The recommended draft and the numbers behind it."""

    draft: str  # COMPONENT or EARLY_EXIT
    rule: str  # the comparison that decided, in words
    speedup_component: float  # ideal speedup of the component draft
    speedup_early_exit: float | None  # None when no early-exit alpha was given
    break_even_alpha: float | None  # used only when no early-exit alpha was given


def recommend_draft(
    alpha_component: float,
    k: int,
    cost_ratio: float,
    *,
    alpha_early_exit: float | None = None,
    cost_ratio_early_exit: float | None = None,
) -> DraftRecommendation:
    """Recommend the component or the early-exit draft from ideal speedups.

    With an early-exit alpha (measured or predicted), the draft with the larger ideal
    speedup S (``metrics.ideal_speedup``) wins, and ties go to the component draft.
    ``cost_ratio_early_exit`` defaults to ``cost_ratio``. With equal cost ratios the rule
    reduces to comparing the two alphas.
    Without an early-exit alpha, the component draft is recommended when its alpha exceeds
    the break-even alpha where S = 1, i.e. when it is expected to beat plain decoding, and
    early exit otherwise.

    ``cost_ratio`` is the component draft's cost per token relative to the full model.
    """
    # NOTE: without an early-exit alpha, "early-exit" only means that the component draft
    # is not expected to beat plain decoding. Whether early exit beats it is not checked.
    _check_k_cost(k, cost_ratio)
    for name, value in (("alpha_component", alpha_component), ("alpha_early_exit", alpha_early_exit)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    speedup_component = ideal_speedup(alpha_component, k, cost_ratio)
    if alpha_early_exit is not None:
        early_cost = cost_ratio if cost_ratio_early_exit is None else cost_ratio_early_exit
        _check_k_cost(k, early_cost)
        speedup_early = ideal_speedup(alpha_early_exit, k, early_cost)
        draft = COMPONENT if speedup_component >= speedup_early else EARLY_EXIT
        rule = (
            f"ideal speedup at k={k}: component {speedup_component:.3f} (alpha {alpha_component:.3f}, "
            f"c {cost_ratio:.3f}) vs early exit {speedup_early:.3f} (alpha {alpha_early_exit:.3f}, c {early_cost:.3f})"
        )
        return DraftRecommendation(draft, rule, speedup_component, speedup_early, None)
    threshold = break_even_alpha(k, cost_ratio)
    draft = COMPONENT if alpha_component > threshold else EARLY_EXIT
    relation = ">" if draft == COMPONENT else "<="
    rule = (
        f"component alpha {alpha_component:.3f} {relation} break-even alpha {threshold:.3f} "
        f"(ideal speedup S = 1 at k={k}, c {cost_ratio:.3f})"
    )
    return DraftRecommendation(draft, rule, speedup_component, None, threshold)


# ---------------------------------------------------------------------------------------
# Cost estimate


def estimate_cost_ratio(model, adapter=None, *, prompt_length: int = 8) -> float:
    """Estimate the component draft's per-token cost as a fraction of the full model's.

    The estimate counts the parameters that a forward reads: the parameters of every
    module whose forward runs under ``adapter.attention_free()``, over those that run in
    the full model. Embedding lookups are excluded because they read one row per token.
    This proxies memory-bound decoding; it ignores cache and state traffic, the attention
    computation over the context and kernel launch overheads.
    """
    adapter = adapter or get_adapter(model)
    full = _parameters_read(model, None, prompt_length)
    draft = _parameters_read(model, adapter.attention_free, prompt_length)
    return draft / full


def _parameters_read(model, context, prompt_length: int) -> int:
    ran: list[torch.nn.Module] = []
    hooks = [m.register_forward_hook(lambda module, args, output: ran.append(module)) for m in model.modules()]
    ids = torch.zeros((1, prompt_length), dtype=torch.long, device=model.device)
    try:
        with torch.inference_mode(), (context() if context else contextlib.nullcontext()):
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        for hook in hooks:
            hook.remove()
    seen: set[int] = set()
    total = 0
    for module in dict.fromkeys(ran):
        if isinstance(module, torch.nn.Embedding):
            continue
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in seen:  # tied weights count once
                seen.add(id(parameter))
                total += parameter.numel()
    return total


# ---------------------------------------------------------------------------------------
# End to end


def predict_for_model(
    model,
    tokens,
    k: int,
    fit_points: Iterable[FitPoint] = (),
    *,
    include_reference: bool = False,
    cost_ratio: float | None = None,
    alpha_early_exit: float | None = None,
    cost_ratio_early_exit: float | None = None,
    window: int = DEFAULT_WINDOW,
    stride: int = DEFAULT_STRIDE,
    bos_token_id: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> dict:
    """Measure the attention-ablation ratio of ``model`` on ``tokens``, predict alpha, pick a draft.

    ``tokens`` is one token stream or a list of documents (see
    ``perplexity.evaluate_perplexity``). ``cost_ratio`` defaults to ``estimate_cost_ratio``.
    The fit uses ``fit_points`` and, with ``include_reference=True``, the study's reference
    points. Returns plain data for JSON output and ``format_prediction``.

    Raises:
        ValueError: for a pure Transformer (no component draft), for fewer than two
            fitting points at ``k``, or for invalid options.
    """
    adapter = get_adapter(model)
    mapping = fit_alpha_mapping(fit_points, include_reference=include_reference)
    if k not in mapping.ks:
        raise ValueError(f"no fitting points at k={k}: the fitting points cover k in {mapping.ks}")
    ablation = evaluate_ablation(
        model, tokens, "attention", adapter=adapter, window=window, stride=stride,
        bos_token_id=bos_token_id, batch_size=batch_size, progress=progress,
    )
    prediction = mapping.predict(ablation.ratio, k)
    cost_source = "given"
    if cost_ratio is None:
        cost_ratio = estimate_cost_ratio(model, adapter)
        cost_source = "estimated from the parameters each forward reads"
    recommendation = recommend_draft(
        prediction.alpha, k, cost_ratio,
        alpha_early_exit=alpha_early_exit, cost_ratio_early_exit=cost_ratio_early_exit,
    )
    points = mapping.points_at(k)
    return {
        "family": adapter.family,
        "k": k,
        "ratio": ablation.ratio,
        "perplexity_full": ablation.full.perplexity,
        "perplexity_ablated": ablation.ablated.perplexity,
        "scored_tokens": ablation.full.scored_tokens,
        "alpha": prediction.alpha,
        "alpha_low": prediction.low,
        "alpha_high": prediction.high,
        "extrapolated": prediction.extrapolated,
        "interval_method": INTERVAL_METHOD,
        "fit_points": [asdict(p) for p in points],
        "includes_reference": include_reference,
        "cost_ratio": cost_ratio,
        "cost_ratio_source": cost_source,
        "alpha_early_exit": alpha_early_exit,
        "recommended_draft": recommendation.draft,
        "rule": recommendation.rule,
        "speedup_component": recommendation.speedup_component,
        "speedup_early_exit": recommendation.speedup_early_exit,
        "break_even_alpha": recommendation.break_even_alpha,
    }


def format_prediction(result: dict) -> str:
    """Format a ``predict_for_model`` result as lines for a terminal."""
    lines = [
        f"model family:        {result['family']}",
        f"perplexity full:     {result['perplexity_full']:.3f} over {result['scored_tokens']} tokens",
        f"perplexity ablated:  {result['perplexity_ablated']:.3f} (attention removed)",
        f"perplexity ratio:    {result['ratio']:.3f}x",
        f"predicted alpha:     {result['alpha']:.3f} at k={result['k']} "
        f"(band {result['alpha_low']:.3f} to {result['alpha_high']:.3f})",
        f"band:                {result['interval_method']}",
    ]
    if result["extrapolated"]:
        lines.append("warning:             the ratio lies outside the fitting points' range, so alpha is extrapolated flat")
    lines += [
        f"draft cost ratio c:  {result['cost_ratio']:.3f} ({result['cost_ratio_source']})",
        f"recommended draft:   {result['recommended_draft']}",
        f"rule:                {result['rule']}",
        f"fitted on {len(result['fit_points'])} points at k={result['k']}:",
    ]
    for point in result["fit_points"]:
        if FitPoint(**point) in STUDY_REFERENCE_POINTS:
            note = f" [reference data reported by {point['source']}]"
        else:
            note = f" [{point['source']}]" if point["source"] else ""
        label = point["label"] or "unlabelled"
        lines.append(f"  ratio {point['ratio']:.3f}  alpha {point['alpha']:.3f}  {label}{note}")
    return "\n".join(lines)
