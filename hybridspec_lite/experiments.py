"""Measurements behind the companion notebooks: each function is one cacheable unit of work.

The notebooks stay thin: they build parameter dicts, pass them through
``results.cached``, and plot what comes back. Every function here returns plain JSON data
that records what was measured (model, draft, k, decoding mode, prompt count and tokens)
and where (``environment()``: CPU or GPU model, thread count, dtype, library versions).

Units:

- ``acceptance_run``: speculative decoding of n prompts, one at a time (batch size 1), with
  per-prompt counts, token-weighted alpha and tau, bootstrap intervals over prompts and the
  median wall time of a draft step and of a verification forward.
- ``baseline_run``: plain decoding of the same prompts, the reference for identical output
  and for the measured speedup.
- ``divergence_run``: how far the draft's next-token distribution is from the full model's
  on teacher-forced text (total variation, KL divergence, top-1 agreement).
- ``perplexity_run``: perplexity of the full and of an ablated model on WikiText-2 test, and
  their ratio, with a bootstrap interval over text chunks.

Metric definitions are those of ``metrics``: alpha = sum accepted / sum drafted over all
rounds of all prompts; tau = tokens emitted per verification round.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import math
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import __version__, data, results, zoo
from .adapters import get_adapter
from .decode import plain_generate, speculative_generate
from .drafts import Draft, make_draft
from .metrics import RunMetrics, expected_tau, ideal_speedup, summed
from .perplexity import ablation_components, evaluate_documents
from .predictor import STUDY_REFERENCE_POINTS, STUDY_SOURCE
from .sampling import SamplingConfig

# ---------------------------------------------------------------------------------------
# Models of each profile

FAMILIES = ("falcon-h1", "qwen3.5", "qwen2")
HYBRID_FAMILIES = ("falcon-h1", "qwen3.5")
SIZES = ("s", "l")

FAMILY_LABELS = {
    "falcon-h1": "Falcon-H1 (parallel hybrid)",
    "qwen3.5": "Qwen3.5 (sequential hybrid)",
    "qwen2": "Qwen2 (Transformer)",
}

# Zoo family of each adapter family (``adapters.Adapter.family``).
ZOO_FAMILY = {"falcon_h1": "falcon-h1", "qwen3_5": "qwen3.5", "qwen2": "qwen2"}

# "tiny": the checkpoints bundled in hybridspec_lite/resources/zoo, trained on GSM8K on a CPU.
# "paper": the study's Hugging Face checkpoints. Size "s" is the smallest registered
# checkpoint of each family and "l" the largest, so that Falcon-H1 0.5B against 3B is the
# study's own scale comparison.
PROFILE_MODELS = {
    "tiny": {(family, size): f"tiny/{family}-{size}" for family in FAMILIES for size in SIZES},
    "paper": {
        ("falcon-h1", "s"): "paper/falcon-h1-0.5b",
        ("falcon-h1", "l"): "paper/falcon-h1-3b",
        ("qwen3.5", "s"): "paper/qwen3.5-0.8b",
        ("qwen3.5", "l"): "paper/qwen3.5-4b",
        ("qwen2", "s"): "paper/qwen2.5-0.5b",
        ("qwen2", "l"): "paper/qwen2.5-3b",
    },
}


def model_name(profile: str, family: str, size: str = "s") -> str:
    """Return the zoo name of ``family`` at ``size`` ("s" or "l") in ``profile`` ("tiny" or "paper")."""
    if profile not in PROFILE_MODELS:
        raise ValueError(f"unknown profile {profile!r}: choose 'tiny' or 'paper'")
    if (family, size) not in PROFILE_MODELS[profile]:
        raise ValueError(f"unknown family or size {family!r}, {size!r}: families {FAMILIES}, sizes {SIZES}")
    return PROFILE_MODELS[profile][(family, size)]


def available(name: str) -> bool:
    """Return whether ``name`` loads without a download: an existing tiny checkpoint or a local directory.

    Paper checkpoints count as available, because only loading them shows whether the Hub
    or its local cache has them.
    """
    if name.startswith("tiny/"):
        entry = {e.name: e for e in zoo.list_models("tiny")}.get(name)
        return entry is not None and (entry.path / "config.json").is_file()
    if name.startswith("paper/"):
        return True
    return os.path.isdir(name)


def select_models(
    profile: str, families: Sequence[str], sizes: Sequence[str], skip_missing: bool = False
) -> tuple[dict, list[str]]:
    """Return ``{(family, size): name}`` for a notebook's models and the names left out.

    A tiny checkpoint that is not trained yet raises FileNotFoundError, unless
    ``skip_missing`` is True: then it is left out and listed in the second value.
    """
    models = {(family, size): model_name(profile, family, size) for family in families for size in sizes}
    missing = [name for name in models.values() if not available(name)]
    if missing and not skip_missing:
        raise FileNotFoundError(
            f"checkpoints not found: {', '.join(missing)}. Train them with "
            "'python -m hybridspec_lite.zoo train --all', or set SKIP_MISSING = True to leave them out"
        )
    return {key: name for key, name in models.items() if name not in missing}, missing


# ---------------------------------------------------------------------------------------
# Reference values reported by the study. Reference points only, never results.

STUDY = STUDY_SOURCE
# Greedy decoding throughout, as the study measured.
STUDY_ACCEPTANCE = (
    {"family": "falcon-h1", "model": "Falcon-H1-0.5B", "k": 2, "alpha": 0.68},
    {"family": "qwen3.5", "model": "Qwen3.5-0.8B", "k": 2, "alpha": 0.038},
    # The study pairs these two with its perplexity ratios (3.15x and 81.96x).
    {"family": "falcon-h1", "model": "Falcon-H1-0.5B", "k": 4, "alpha": 0.37},
    {"family": "qwen3.5", "model": "Qwen3.5-0.8B", "k": 4, "alpha": 0.019},
)
STUDY_PERPLEXITY_POINTS = STUDY_REFERENCE_POINTS
# Sequential hybrid: acceptance of generic early exit (LayerSkip) over the component draft.
STUDY_EARLY_EXIT_FACTOR = 12.0


# ---------------------------------------------------------------------------------------
# Environment


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or what ``platform`` reports elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(dtype: str = "float32", device: str = "cpu") -> dict:
    """Return the machine and software a measurement ran on, as plain data."""
    import transformers

    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": None,
        "dtype": dtype,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hybridspec_lite": __version__,
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def describe_environment(env: dict) -> str:
    """Return one line naming the machine, threads, dtype and versions of ``environment()``."""
    where = env["gpu"] or env["cpu"]
    return (
        f"{where}, {env['torch_threads']} torch thread(s), {env['dtype']}, "
        f"torch {env['torch']}, transformers {env['transformers']}"
    )


# ---------------------------------------------------------------------------------------
# Models, prompts and texts


@functools.lru_cache(maxsize=2)
def load_model(name: str, dtype: str = "float32", device: str = "cpu"):
    """Load ``(model, tokenizer)`` through ``zoo.load``; the last two loads stay in memory."""
    if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
        raise ValueError(f"invalid dtype {dtype!r}: use a torch dtype name such as 'float32' or 'bfloat16'")
    return zoo.load(name, dtype=getattr(torch, dtype), device=device)


def encode_prompts(tokenizer, dataset: str, n: int, seed: int) -> list[list[int]]:
    """Return the token ids of ``data.prompts(dataset, n, seed)``, without special tokens."""
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in data.prompts(dataset, n, seed)]


def documents(dataset: str, n: int, seed: int) -> list[str]:
    """Return ``n`` whole texts drawn with ``random.Random(seed)``.

    The texts are GSM8K test problems with their answers, or WikiText-2 test paragraphs.
    """
    if dataset == "gsm8k":
        candidates = [data.format_gsm8k(problem) for problem in data.load_gsm8k("test")]
    elif dataset == "wikitext":
        candidates = data.wikitext2_paragraphs()
    else:
        raise ValueError(f"invalid dataset {dataset!r}: choose 'gsm8k' or 'wikitext'")
    if not 1 <= n <= len(candidates):
        raise ValueError(f"invalid document count {n}: choose 1 to {len(candidates)} for {dataset!r}")
    return [candidates[i] for i in random.Random(seed).sample(range(len(candidates)), n)]


def sampling_config(temperature: float | None = None, top_k: int | None = None, top_p: float | None = None) -> SamplingConfig:
    """Return greedy decoding for ``temperature=None``, else sampling at that temperature."""
    if temperature is None:
        if top_k is not None or top_p is not None:
            raise ValueError("top_k and top_p apply only to sampling: give a temperature too")
        return SamplingConfig()
    return SamplingConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)


def _prompt_generator(seed: int, prompt_index: int, device: str) -> torch.Generator:
    # One generator per prompt, so a prompt's samples do not depend on the prompts before it.
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + prompt_index)


# ---------------------------------------------------------------------------------------
# Bootstrap intervals


def bootstrap_statistic(
    columns: Sequence[Sequence[float]],
    statistic: Callable[..., float],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Compute a percentile bootstrap interval over rows (prompts, chunks) of ``statistic(*column_sums)``.

    ``columns`` are equal-length per-row values. Each resample draws rows with replacement
    and applies ``statistic`` to the column sums. Resamples where the statistic is not
    finite (for example a zero denominator) are dropped. Returns the estimate on all rows
    and the ``level`` interval as a dict.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    arrays = [np.asarray(column, dtype=float) for column in columns]
    rows = len(arrays[0])
    if rows == 0:
        raise ValueError("no rows to resample: pass at least one prompt or chunk")
    if any(len(a) != rows for a in arrays):
        raise ValueError(f"columns differ in length: {[len(a) for a in arrays]}")
    estimate = statistic(*(a.sum() for a in arrays))

    rng = np.random.default_rng(seed)
    picks = rng.integers(0, rows, size=(n_boot, rows))
    sums = [a[picks].sum(axis=1) for a in arrays]
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.array([statistic(*row) for row in zip(*sums)], dtype=float)
    values = values[np.isfinite(values)]
    tail = (1 - level) / 2
    if len(values) == 0:
        low = high = float("nan")
    else:
        low, high = (float(v) for v in np.quantile(values, [tail, 1 - tail]))
    return {"estimate": float(estimate), "low": low, "high": high, "level": level, "n_boot": n_boot, "rows": rows}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def bootstrap_interval(
    per_prompt_accepted: Sequence[int],
    per_prompt_drafted: Sequence[int],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Compute the percentile bootstrap interval over prompts of alpha = sum accepted / sum drafted.

    Raises ValueError when nothing was drafted at all, because alpha is then undefined.
    """
    if sum(per_prompt_drafted) == 0:
        raise ValueError("nothing was drafted in any prompt, so the acceptance rate is undefined")
    return bootstrap_statistic([per_prompt_accepted, per_prompt_drafted], _ratio, n_boot, seed, level)


# ---------------------------------------------------------------------------------------
# Wall time of each forward


class ForwardTimer:
    """Times every forward of a model and tags it with the decoding phase it ran in.

    Phases: "draft" while a draft proposes tokens, "draft-state" while it prepares or
    follows the target (the own-state prefill), "target" otherwise (the prefill first,
    then one verification forward per round). CUDA is synchronised around each forward,
    which costs GPU throughput but makes each time that forward's own.
    """

    # NOTE: the CUDA branch has not been run: no GPU was available where this was written.

    def __init__(self, model):
        self.model = model
        self.phase = "target"
        self.records: list[tuple[str, float, int]] = []  # (phase, seconds, input tokens)
        self._cuda = model.device.type == "cuda"
        self._start = 0.0
        self._tokens = 0
        self._handles = []

    def __enter__(self) -> "ForwardTimer":
        self._handles = [
            self.model.register_forward_pre_hook(self._before, with_kwargs=True),
            self.model.register_forward_hook(self._after),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _before(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._tokens = int(ids.shape[-1]) if ids is not None else 0
        if self._cuda:
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def _after(self, module, args, output):
        if self._cuda:
            torch.cuda.synchronize()
        self.records.append((self.phase, time.perf_counter() - self._start, self._tokens))

    @contextlib.contextmanager
    def tagged(self, phase: str):
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous

    def seconds(self, phase: str) -> list[float]:
        """Return the times of the forwards tagged ``phase``, in order."""
        return [seconds for tag, seconds, _ in self.records if tag == phase]


class TimedDraft(Draft):
    """Delegates to a draft while a ``ForwardTimer`` tags its forwards."""

    def __init__(self, inner: Draft, timer: ForwardTimer):
        self.inner = inner
        self.timer = timer
        self.name = inner.name

    def prepare(self, adapter, state, input_ids, attention_mask):
        with self.timer.tagged("draft-state"):
            self.inner.prepare(adapter, state, input_ids, attention_mask)

    def propose(self, adapter, state, last_cached, pending, k, sampler):
        with self.timer.tagged("draft"):
            return self.inner.propose(adapter, state, last_cached, pending, k, sampler)

    def accepted(self, adapter, state, accepted, k):
        with self.timer.tagged("draft-state"):
            self.inner.accepted(adapter, state, accepted, k)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------------
# Acceptance


def acceptance_run(
    model_name: str,
    draft: str = "component",
    k: int = 2,
    state: str = "shared",
    exit_layer: int | None = None,
    n_prompts: int = 8,
    max_new_tokens: int = 32,
    dataset: str = "gsm8k",
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    n_boot: int = 2000,
    baseline: bool = True,
) -> dict:
    """Decode ``n_prompts`` prompts one at a time with a self-speculative draft; return counts and rates.

    Args:
        model_name: a zoo name (``tiny/falcon-h1-s``, ``paper/qwen3.5-0.8b``) or a directory.
        draft: "component" (attention removed), "early-exit" (first ``exit_layer`` layers)
            or "self" (the full model; accepts everything).
        k: tokens drafted per round.
        state: recurrent state of the component draft, "shared" or "own".
        exit_layer: decoder layers the early-exit draft runs.
        n_prompts, dataset, seed: the prompts ``data.prompts(dataset, n_prompts, seed)``.
        max_new_tokens: new tokens per prompt unless EOS comes first.
        temperature, top_k, top_p: None for greedy; otherwise speculative sampling with a
            generator seeded from ``seed`` and the prompt's index.
        n_boot: bootstrap resamples for the intervals over prompts.
        baseline: also decode each prompt without a draft right after its speculative
            decode, with a generator seeded the same way. The measured speedup then
            compares the two under the same machine load, and ``identical_prompts``
            counts the prompts whose tokens match (all of them under greedy decoding).

    Returns a dict with ``per_prompt`` counts (accepted, drafted, emitted, rounds,
    per-position counts, seconds, the generated tokens) and the settings and
    ``environment`` it ran with. Its totals are the token-weighted ``alpha`` and ``tau``
    with 95% bootstrap intervals, and ``acceptance_by_position``. Its ``timing`` contains the
    median wall time of a draft step and of a verification forward, and their ratio c.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sampling = sampling_config(temperature, top_k, top_p)
    make_draft(draft, state=state, exit_layer=exit_layer)  # validates before the model loads
    model, tokenizer = load_model(model_name, dtype, device)
    adapter = get_adapter(model)
    prompt_ids = encode_prompts(tokenizer, dataset, n_prompts, seed)

    per_prompt, metrics = [], []
    timer = ForwardTimer(model)
    with timer:
        for index, ids in enumerate(prompt_ids):
            timed = TimedDraft(make_draft(draft, state=state, exit_layer=exit_layer), timer)
            out = speculative_generate(
                model,
                [ids],
                timed,
                k=k,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                sampling=sampling,
                generator=_prompt_generator(seed, index, device),
                adapter=adapter,
            )
            total = out.total
            metrics.append(total)
            counts = _prompt_counts(total, len(ids), out.tokens[0])
            if baseline:
                with timer.tagged("plain"):
                    plain = plain_generate(
                        model,
                        [ids],
                        max_new_tokens=max_new_tokens,
                        eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id,
                        sampling=sampling,
                        generator=_prompt_generator(seed, index, device),
                    )
                counts["plain_seconds"] = plain.total.total_seconds
                counts["plain_new_tokens"] = plain.total.new_tokens
                counts["identical"] = plain.tokens[0] == out.tokens[0]
            per_prompt.append(counts)

    total = summed(metrics)
    total.k = k
    accepted = [p["accepted"] for p in per_prompt]
    drafted = [p["drafted"] for p in per_prompt]
    emitted = [p["emitted"] for p in per_prompt]
    rounds = [p["rounds"] for p in per_prompt]
    return {
        "kind": "acceptance",
        "model": model_name,
        "family": adapter.family,
        "composition": adapter.composition,
        "num_layers": adapter.num_layers,
        "draft": draft,
        "state": state if draft == "component" else None,
        "exit_layer": exit_layer if draft == "early-exit" else None,
        "k": k,
        "decoding": sampling.describe(),
        "sampling": {"do_sample": sampling.do_sample, "temperature": temperature, "top_k": top_k, "top_p": top_p},
        "seed": seed,
        "batch_size": 1,
        "dataset": dataset,
        "n_prompts": n_prompts,
        "max_new_tokens": max_new_tokens,
        "prompt_tokens": sum(len(ids) for ids in prompt_ids),
        "new_tokens": total.new_tokens,
        "accepted": total.accepted,
        "drafted": total.drafted,
        "emitted": total.emitted,
        "rounds": total.rounds,
        "alpha": total.alpha,
        "tau": total.tau,
        "alpha_interval": bootstrap_interval(accepted, drafted, n_boot, seed) if total.drafted else None,
        "tau_interval": bootstrap_statistic([emitted, rounds], _ratio, n_boot, seed),
        "tau_iid": expected_tau(total.alpha, k) if total.alpha is not None else None,
        "acceptance_by_position": total.acceptance_by_position,
        "position_accepted": total.position_accepted,
        "position_drafted": total.position_drafted,
        "timing": _timing_summary(timer, metrics, per_prompt if baseline else None),
        "identical_prompts": sum(p["identical"] for p in per_prompt) if baseline else None,
        "per_prompt": per_prompt,
        "environment": environment(dtype, device),
    }


def _prompt_counts(metrics: RunMetrics, prompt_tokens: int, tokens: list[int]) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "new_tokens": metrics.new_tokens,
        "accepted": metrics.accepted,
        "drafted": metrics.drafted,
        "emitted": metrics.emitted,
        "rounds": metrics.rounds,
        "position_accepted": metrics.position_accepted,
        "position_drafted": metrics.position_drafted,
        "seconds": metrics.total_seconds,
        "draft_seconds": metrics.draft_seconds,
        "verify_seconds": metrics.verify_seconds,
        "tokens": tokens,
    }


def _timing_summary(timer: ForwardTimer, metrics: list[RunMetrics], per_prompt: list[dict] | None) -> dict:
    # Every prompt's first target forward is its prefill; the others verify one round each.
    draft_steps = timer.seconds("draft")
    verify = []
    prefill = []
    target = [(seconds, tokens) for tag, seconds, tokens in timer.records if tag == "target"]
    index = 0
    for m in metrics:
        prefill.append(target[index][0])
        verify.extend(seconds for seconds, _ in target[index + 1 : index + 1 + m.rounds])
        index += 1 + m.rounds
    draft_median = _median(draft_steps)
    verify_median = _median(verify)
    seconds = sum(m.total_seconds for m in metrics)
    new_tokens = sum(m.new_tokens for m in metrics)
    summary = {
        "draft_step_median_s": draft_median,
        "verify_median_s": verify_median,
        "prefill_median_s": _median(prefill),
        "cost_ratio": draft_median / verify_median if draft_median is not None and verify_median else None,
        "draft_steps": len(draft_steps),
        "verify_forwards": len(verify),
        "seconds": seconds,
        "seconds_per_token": seconds / new_tokens if new_tokens else None,
    }
    if per_prompt is not None:
        # Plain decoding: one prefill per prompt, then one single-token forward per token.
        plain_steps = [seconds for tag, seconds, tokens in timer.records if tag == "plain" and tokens == 1]
        plain_seconds = sum(p["plain_seconds"] for p in per_prompt)
        plain_tokens = sum(p["plain_new_tokens"] for p in per_prompt)
        plain_per_token = plain_seconds / plain_tokens if plain_tokens else None
        plain_step = _median(plain_steps)
        summary.update(
            plain_step_median_s=plain_step,
            plain_seconds_per_token=plain_per_token,
            measured_speedup=plain_per_token / summary["seconds_per_token"] if plain_per_token and summary["seconds_per_token"] else None,
            verify_over_plain_step=verify_median / plain_step if verify_median and plain_step else None,
        )
    return summary


def baseline_run(
    model_name: str,
    n_prompts: int = 8,
    max_new_tokens: int = 32,
    dataset: str = "gsm8k",
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict:
    """Decode the prompts of ``acceptance_run`` without a draft: tokens and wall time per prompt.

    Under greedy decoding its tokens must equal every speculative run's tokens on the same
    prompts; under sampling they need not, because the random streams differ.
    """
    sampling = sampling_config(temperature, top_k, top_p)
    model, tokenizer = load_model(model_name, dtype, device)
    prompt_ids = encode_prompts(tokenizer, dataset, n_prompts, seed)
    per_prompt, metrics = [], []
    timer = ForwardTimer(model)
    with timer:
        for index, ids in enumerate(prompt_ids):
            out = plain_generate(
                model,
                [ids],
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                sampling=sampling,
                generator=_prompt_generator(seed, index, device),
            )
            metrics.append(out.total)
            per_prompt.append(
                {"prompt_tokens": len(ids), "new_tokens": out.total.new_tokens, "seconds": out.total.total_seconds, "tokens": out.tokens[0]}
            )
    # Each prompt: one prefill, then one single-token forward per further token.
    forwards = [(seconds, tokens) for _, seconds, tokens in timer.records]
    decode_steps = [seconds for seconds, tokens in forwards if tokens == 1]
    seconds = sum(m.total_seconds for m in metrics)
    new_tokens = sum(m.new_tokens for m in metrics)
    return {
        "kind": "baseline",
        "model": model_name,
        "decoding": sampling.describe(),
        "seed": seed,
        "batch_size": 1,
        "dataset": dataset,
        "n_prompts": n_prompts,
        "max_new_tokens": max_new_tokens,
        "prompt_tokens": sum(len(ids) for ids in prompt_ids),
        "new_tokens": new_tokens,
        "timing": {
            "decode_step_median_s": _median(decode_steps),
            "seconds": seconds,
            "seconds_per_token": seconds / new_tokens if new_tokens else None,
        },
        "per_prompt": per_prompt,
        "environment": environment(dtype, device),
    }


def cost_summary(acceptance: dict, baseline: dict | None = None) -> dict:
    """Compare a speculative run with plain decoding of the same prompts.

    Plain decoding comes from ``baseline`` (a ``baseline_run`` result) when given, else
    from the run's own paired plain decodes (``acceptance_run(..., baseline=True)``), which
    ran under the same machine load.

    Returns:
        cost_ratio: c, the median draft step over the median verification forward.
        ideal_speedup: Leviathan et al. (2023) at the run's alpha, k and c.
        measured_speedup: plain seconds per token over speculative seconds per token.
        verify_over_plain_step: a verification forward in plain decoding steps; the ideal
            speedup assumes 1.
        identical_prompts: prompts whose tokens equal plain decoding's.
    """
    timing = acceptance["timing"]
    if baseline is not None:
        for key in ("model", "dataset", "n_prompts", "max_new_tokens", "seed", "decoding"):
            if acceptance[key] != baseline[key]:
                raise ValueError(f"runs differ in {key}: {acceptance[key]!r} vs {baseline[key]!r}; compare runs on the same prompts")
        plain_per_token = baseline["timing"]["seconds_per_token"]
        plain_step = baseline["timing"]["decode_step_median_s"]
        identical = sum(a["tokens"] == b["tokens"] for a, b in zip(acceptance["per_prompt"], baseline["per_prompt"]))
    elif "plain_seconds_per_token" in timing:
        plain_per_token = timing["plain_seconds_per_token"]
        plain_step = timing["plain_step_median_s"]
        identical = acceptance["identical_prompts"]
    else:
        raise ValueError("the run has no paired plain decoding: pass a baseline_run result, or measure with baseline=True")
    c = timing["cost_ratio"]
    alpha = acceptance["alpha"]
    speculative = timing["seconds_per_token"]
    verify = timing["verify_median_s"]
    return {
        "cost_ratio": c,
        "ideal_speedup": ideal_speedup(alpha, acceptance["k"], c) if alpha is not None and c is not None else None,
        "measured_speedup": plain_per_token / speculative if plain_per_token and speculative else None,
        "verify_over_plain_step": verify / plain_step if verify and plain_step else None,
        "identical_prompts": identical,
        "n_prompts": acceptance["n_prompts"],
    }


# ---------------------------------------------------------------------------------------
# Draft/target divergence


@contextlib.contextmanager
def draft_subgraph(adapter, draft: str, exit_layer: int | None = None):
    """Run the model as the draft ``draft`` ("component" or "early-exit") inside the block."""
    if draft == "component":
        with adapter.attention_free():
            yield
    elif draft == "early-exit":
        if exit_layer is None:
            raise ValueError("the early-exit draft needs an exit layer")
        with adapter.truncated(exit_layer):
            yield
    else:
        raise ValueError(f"unknown draft {draft!r}: choose 'component' or 'early-exit'")


def divergence_run(
    model_name: str,
    draft: str = "component",
    exit_layer: int | None = None,
    dataset: str = "gsm8k",
    n_documents: int = 16,
    max_tokens: int = 256,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    n_boot: int = 2000,
) -> dict:
    """Measure how far the draft's next-token distribution q is from the full model's p.

    Both read the same teacher-forced text (``documents(dataset, n_documents, seed)``, each
    cut to ``max_tokens`` tokens) in one forward each, so the draft runs on its own states
    over the whole text, as the component draft with ``state="own"`` does. Per position:

    - total variation TV = 0.5 * sum |p - q|; 1 - TV is the acceptance probability of one
      speculative sampling step at temperature 1 (Leviathan et al., 2023);
    - KL(p || q) in nats;
    - top-1 agreement: argmax q == argmax p, the greedy acceptance of one draft token.

    Means are over all scored positions (token-weighted), with bootstrap intervals over
    documents.
    """
    model, tokenizer = load_model(model_name, dtype, device)
    adapter = get_adapter(model)
    texts = documents(dataset, n_documents, seed)
    rows = {"tv": [], "kl": [], "agree": [], "positions": []}
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
            if len(ids) < 2:
                continue
            input_ids = torch.tensor([ids], device=model.device)
            full = model(input_ids=input_ids, use_cache=False).logits[0].float()
            with draft_subgraph(adapter, draft, exit_layer):
                drafted = model(input_ids=input_ids, use_cache=False).logits[0].float()
            log_p = torch.log_softmax(full, dim=-1)
            log_q = torch.log_softmax(drafted, dim=-1)
            tv = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)
            kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
            agree = (full.argmax(dim=-1) == drafted.argmax(dim=-1)).float()
            rows["tv"].append(float(tv.double().sum()))
            rows["kl"].append(float(kl.double().sum()))
            rows["agree"].append(float(agree.sum()))
            rows["positions"].append(len(ids))
    if not rows["positions"]:
        raise ValueError(f"no {dataset} document had 2 or more tokens")

    def mean_with_interval(key: str) -> dict:
        return bootstrap_statistic([rows[key], rows["positions"]], _ratio, n_boot, seed)

    tv = mean_with_interval("tv")
    return {
        "kind": "divergence",
        "model": model_name,
        "family": adapter.family,
        "draft": draft,
        "exit_layer": exit_layer if draft == "early-exit" else None,
        "dataset": dataset,
        "n_documents": len(rows["positions"]),
        "positions": sum(rows["positions"]),
        "max_tokens": max_tokens,
        "total_variation": tv,
        "kl": mean_with_interval("kl"),
        "top1_agreement": mean_with_interval("agree"),
        "sampling_acceptance": {**tv, "estimate": 1 - tv["estimate"], "low": 1 - tv["high"], "high": 1 - tv["low"]},
        "environment": environment(dtype, device),
    }


# ---------------------------------------------------------------------------------------
# Perplexity ratio


@functools.lru_cache(maxsize=4)
def _wikitext_tokens(model_name: str, dtype: str, device: str, limit: int) -> tuple[int, ...]:
    _, tokenizer = load_model(model_name, dtype, device)
    # Only the first ``limit`` tokens are scored, so tokenize paragraphs until there are enough.
    tokens: list[int] = []
    for paragraph in data.load_wikitext2_test().split("\n"):
        tokens.extend(tokenizer(paragraph + "\n", add_special_tokens=False)["input_ids"])
        if len(tokens) >= limit:
            break
    return tuple(tokens[:limit])


def perplexity_run(
    model_name: str,
    ablation: str = "attention",
    n_chunks: int = 8,
    chunk_tokens: int = 512,
    window: int = 256,
    stride: int = 128,
    dtype: str = "float32",
    device: str = "cpu",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Measure the perplexity of the full and the ablated model on the start of WikiText-2 test, and their ratio.

    The first ``n_chunks * chunk_tokens`` tokens of the raw test split are cut into
    ``n_chunks`` chunks, each scored with sliding windows (``perplexity.evaluate_documents``).
    ``ablation`` is a name of ``perplexity.ablation_components`` ("attention", "random:<seed>",
    "layer:<i>", ...) or "exit:<E>" for the first E layers only (the early-exit draft).
    The ratio PPL(ablated) / PPL(full) gets a bootstrap interval over chunks.
    """
    model, _ = load_model(model_name, dtype, device)
    adapter = get_adapter(model)
    tokens = _wikitext_tokens(model_name, dtype, device, n_chunks * chunk_tokens)
    if len(tokens) < n_chunks * chunk_tokens:
        raise ValueError(f"WikiText-2 test has only {len(tokens)} tokens, fewer than {n_chunks} x {chunk_tokens}")
    chunks = [list(tokens[i * chunk_tokens : (i + 1) * chunk_tokens]) for i in range(n_chunks)]
    options = dict(window=window, stride=stride, adapter=adapter, progress=False)

    full = evaluate_documents(model, chunks, **options)
    if ablation.startswith("exit:"):
        exit_layer = int(ablation.split(":", 1)[1])
        components = []
        with adapter.truncated(exit_layer):
            ablated = evaluate_documents(model, chunks, **options)
    else:
        components = ablation_components(adapter, ablation)
        ablated = evaluate_documents(model, chunks, components=components, **options)

    full_nll = [r.total_nll for r in full]
    ablated_nll = [r.total_nll for r in ablated]
    scored = [r.scored_tokens for r in full]

    def ratio(ablated_sum, full_sum, count):
        return math.exp((ablated_sum - full_sum) / count)

    return {
        "kind": "perplexity",
        "model": model_name,
        "family": adapter.family,
        "ablation": ablation,
        "removed": [[c.layer, c.kind] for c in components],
        "text": "WikiText-2 raw test split, from its start",
        "n_chunks": n_chunks,
        "chunk_tokens": chunk_tokens,
        "scored_tokens": sum(scored),
        "window": window,
        "stride": stride,
        "perplexity_full": math.exp(sum(full_nll) / sum(scored)),
        "perplexity_ablated": math.exp(sum(ablated_nll) / sum(scored)),
        "ratio": bootstrap_statistic([ablated_nll, full_nll, scored], ratio, n_boot, seed),
        "environment": environment(dtype, device),
    }


# ---------------------------------------------------------------------------------------
# Cached units for the notebooks

MEASUREMENTS = {
    "acceptance": acceptance_run,
    "baseline": baseline_run,
    "divergence": divergence_run,
    "perplexity": perplexity_run,
}


def unit_params(kind: str, **settings) -> dict:
    """Return the full parameters of one ``kind`` unit: ``settings`` with every default filled in.

    Settings that the chosen draft ignores are set to None: the state of a non-component
    draft and the exit layer of a non-early-exit draft. Two notebooks that request the same
    measurement then produce the same parameters and share one cached result.
    """
    if kind not in MEASUREMENTS:
        raise ValueError(f"unknown measurement {kind!r}: choose one of {', '.join(MEASUREMENTS)}")
    signature = inspect.signature(MEASUREMENTS[kind])
    try:
        bound = signature.bind(**settings)
    except TypeError as error:
        raise TypeError(f"invalid settings for a {kind} unit: {error}") from None
    bound.apply_defaults()
    params = dict(bound.arguments)
    if "draft" in params:
        if "state" in params and params["draft"] != "component":
            params["state"] = None
        if params["draft"] != "early-exit":
            params["exit_layer"] = None
    return params


def checkpoint_fingerprint(name: str) -> str | None:
    """Return the SHA-256 of a local checkpoint's config and weight files, or None for a Hub checkpoint.

    Stored results are keyed by it, so a retrained tiny model is measured again instead of
    being served stale results.
    """
    entry = {e.name: e for e in zoo.list_models()}.get(name)
    directory = entry.path if entry is not None else (Path(name) if os.path.isdir(name) else None)
    if directory is None:
        # NOTE: Hub checkpoints are keyed by name only; a new upload under the same name
        # is not detected.
        return None
    files = sorted(p for p in directory.glob("*") if p.suffix in (".json", ".safetensors"))
    # Size and modification time key the memo, so a file rewritten in place is hashed again.
    return _fingerprint_files(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@functools.lru_cache(maxsize=16)
def _fingerprint_files(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(Path(path).name.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def measure(kind: str, units: Sequence[dict], root=None, progress: bool = True) -> list[dict]:
    """Run every unit of one measurement ``kind`` through the results store; return their results.

    Each unit is a dict of settings for the measurement function (``acceptance_run``,
    ``baseline_run``, ``divergence_run`` or ``perplexity_run``). Finished units are read
    back, not recomputed, and each new unit is stored as soon as it finishes. The stored
    parameters add the model's ``checkpoint_fingerprint``.
    """
    params = []
    for unit in units:
        settings = unit_params(kind, **unit)
        params.append({**settings, "checkpoint": checkpoint_fingerprint(settings["model_name"])})
    function = MEASUREMENTS[kind]

    def compute(stored: dict) -> dict:
        return function(**{key: value for key, value in stored.items() if key != "checkpoint"})

    return results.sweep(kind, params, compute, root=root, progress=progress)


def layer_count(name: str) -> int:
    """Return the number of decoder layers of a zoo model from its config, without loading weights."""
    entry = {e.name: e for e in zoo.list_models()}.get(name)
    if entry is not None and entry.path is not None:
        config = json.loads((entry.path / "config.json").read_text(encoding="utf-8"))
        return int(config["num_hidden_layers"])
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(entry.hub_id if entry is not None else name)
    config = getattr(config, "text_config", config)
    return int(config.num_hidden_layers)


def variant_label(run: dict) -> str:
    """Name the draft of an acceptance run for legends: "component, shared state", "early exit at layer 2"."""
    if run["draft"] == "component":
        return f"component, {run['state']} state"
    if run["draft"] == "early-exit":
        return f"early exit at layer {run['exit_layer']}"
    return run["draft"]


def acceptance_table(runs: Sequence[dict]):
    """Return one pandas row per acceptance run: settings, alpha and tau with intervals, costs and speedups."""
    import pandas as pd

    rows = []
    for run in runs:
        alpha = run["alpha_interval"] or {"low": None, "high": None}
        paired = "plain_seconds_per_token" in run["timing"]
        cost = cost_summary(run) if paired else {}
        rows.append(
            {
                "model": run["model"],
                "family": ZOO_FAMILY.get(run["family"], run["family"]),
                "draft": run["draft"],
                "variant": variant_label(run),
                "state": run["state"],
                "exit_layer": run["exit_layer"],
                "k": run["k"],
                "decoding": run["decoding"],
                "alpha": run["alpha"],
                "alpha_low": alpha["low"],
                "alpha_high": alpha["high"],
                "tau": run["tau"],
                "tau_low": run["tau_interval"]["low"],
                "tau_high": run["tau_interval"]["high"],
                "prompts": run["n_prompts"],
                "new_tokens": run["new_tokens"],
                "cost_ratio": run["timing"]["cost_ratio"],
                "ideal_speedup": cost.get("ideal_speedup"),
                "measured_speedup": cost.get("measured_speedup"),
                "verify_over_plain_step": cost.get("verify_over_plain_step"),
                "identical_prompts": cost.get("identical_prompts"),
            }
        )
    return pd.DataFrame(rows)
