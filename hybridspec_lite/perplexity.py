"""Sliding-window perplexity and component-ablation perplexity ratios.

Sliding windows follow the standard strided method of the Hugging Face transformers guide
"Perplexity of fixed-length models". Window ``i`` reads tokens ``[i * stride, i * stride +
window)`` of the stream and scores only the tokens after the previous window's end. So every
token after the first is scored exactly once, and every window after the first gives each
scored token at least ``window - stride`` tokens of context. The first token of a stream is
never scored because nothing predicts it.

BOS handling: the evaluator adds no BOS token unless asked. A given ``bos_token_id`` is
prepended to each stream and never scored, so that every token of the caller's list is
scored, the first one included.

An ablation runs the same evaluation with some components removed through the model's
adapter (``adapters.get_adapter``). The ratio PPL(ablated) / PPL(full) of the "attention"
ablation measures how well the attention-free subgraph, the component draft, models the
text on its own.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .adapters import ATTENTION, Adapter, Component, get_adapter

# Defaults of the Hugging Face perplexity guide for GPT-2: a 1024-token window moved by 512.
DEFAULT_WINDOW = 1024
DEFAULT_STRIDE = 512

TokenStream = Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class Window:
    """One forward of the sliding-window method over stream positions ``[begin, end)``.

    The window scores the tokens at positions ``[score_from, end)``. The tokens before
    ``score_from`` are context only.
    """

    begin: int
    end: int
    score_from: int


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of a model over one token stream, or pooled over several."""

    perplexity: float  # exp(mean_nll)
    mean_nll: float  # mean negative log-likelihood per scored token, in nats
    scored_tokens: int
    total_nll: float  # summed in float64, in nats
    # Indices of the scored tokens in the caller's token list, in scoring order. Filled only
    # when the evaluator is called with return_positions=True.
    scored_positions: tuple[int, ...] | None = None


def plan_windows(length: int, window: int = DEFAULT_WINDOW, stride: int = DEFAULT_STRIDE) -> list[Window]:
    """Split a stream of ``length`` tokens into sliding windows that score each token once.

    Every position from 1 to ``length - 1`` is scored by exactly one window. ``stride``
    must be smaller than ``window``: with ``stride == window`` the first token of each
    window would have no context inside it and would be skipped.
    """
    _check_window(window, stride)
    if length < 2:
        raise ValueError(f"a stream of {length} token(s) has nothing to score: at least 2 tokens are needed")
    windows = []
    previous_end = 1  # position 0 is never scored
    begin = 0
    while previous_end < length:
        end = min(begin + window, length)
        windows.append(Window(begin=begin, end=end, score_from=previous_end))
        previous_end = end
        begin += stride
    return windows


def _check_window(window: int, stride: int) -> None:
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    if not 1 <= stride < window:
        raise ValueError(
            f"stride must be between 1 and window - 1 = {window - 1}, got {stride}: with "
            "stride >= window a token at a window's start has no context and is skipped. "
            "Use stride = window - 1 for the least overlap."
        )


def pool_results(results: Sequence[PerplexityResult]) -> PerplexityResult:
    """Pool per-document results into one token-weighted perplexity."""
    if not results:
        raise ValueError("no results to pool: pass at least one PerplexityResult")
    total_nll = math.fsum(r.total_nll for r in results)
    scored = sum(r.scored_tokens for r in results)
    mean_nll = total_nll / scored
    return PerplexityResult(perplexity=math.exp(mean_nll), mean_nll=mean_nll, scored_tokens=scored, total_nll=total_nll)


def _as_stream(tokens: TokenStream, index: int) -> list[int]:
    if isinstance(tokens, torch.Tensor):
        if tokens.ndim != 1:
            raise ValueError(f"document {index} must be a 1-D tensor of token ids, got shape {tuple(tokens.shape)}")
        return tokens.tolist()
    return [int(t) for t in tokens]


def _is_single_stream(tokens) -> bool:
    if isinstance(tokens, torch.Tensor):
        return tokens.ndim == 1
    return len(tokens) > 0 and not isinstance(tokens[0], (Sequence, torch.Tensor))


def evaluate_documents(
    model,
    documents: Sequence[TokenStream],
    *,
    window: int = DEFAULT_WINDOW,
    stride: int = DEFAULT_STRIDE,
    bos_token_id: int | None = None,
    batch_size: int = 1,
    padding_side: Literal["right", "left"] = "right",
    pad_token_id: int | None = None,
    components: Iterable[Component] = (),
    adapter: Adapter | None = None,
    progress: bool = True,
    return_positions: bool = False,
) -> list[PerplexityResult]:
    """Compute the sliding-window perplexity of each document, batching windows across them.

    Args:
        model: a supported transformers causal LM (see ``adapters.get_adapter``).
        documents: token id lists or 1-D tensors, one per document. Each is scored on its
            own; batching windows of different documents together does not change the
            values beyond float rounding.
        window: tokens per forward; at most the model's ``max_position_embeddings``.
        stride: tokens the window moves each step, 1 <= stride < window.
        bos_token_id: prepended to every document and never scored; None adds nothing.
        batch_size: windows per forward. Shorter windows are padded on ``padding_side``
            with ``pad_token_id`` (default: the config's, else 0) and masked out, and no
            padding position is ever scored.
        components: components to remove while evaluating (see ``ablation_components``).
        adapter: the model's adapter; built with ``get_adapter`` when None.
        progress: show a tqdm progress bar over windows.
        return_positions: fill ``scored_positions`` of each result.

    Raises:
        ValueError: on an invalid window, stride, batch size or padding side, or a
            document with fewer than 2 tokens after the optional BOS.
    """
    _check_window(window, stride)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and window > limit:
        raise ValueError(f"window {window} exceeds the model's max_position_embeddings {limit}; choose a smaller window")
    if len(documents) == 0:
        raise ValueError("no documents given: pass at least one token stream")
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    prefix = [] if bos_token_id is None else [int(bos_token_id)]
    streams = [prefix + _as_stream(doc, i) for i, doc in enumerate(documents)]
    jobs = []
    for index, stream in enumerate(streams):
        if len(stream) < 2:
            raise ValueError(
                f"document {index} has {len(stream)} token(s) including any BOS: at least 2 are "
                "needed to score one; drop it or pass bos_token_id"
            )
        jobs.extend((index, w) for w in plan_windows(len(stream), window, stride))

    adapter = adapter or get_adapter(model)
    totals = torch.zeros(len(streams), dtype=torch.float64)
    counts = [0] * len(streams)
    positions: list[list[int]] = [[] for _ in streams]
    bar = tqdm(total=len(jobs), unit="window", desc="perplexity", disable=not progress)
    with torch.inference_mode(), adapter.removed(components):
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            nll, owners = _score_batch(model, streams, batch, padding_side, pad_token_id)
            totals.index_add_(0, owners, nll.double().cpu())
            for index, w in batch:
                counts[index] += w.end - w.score_from
                positions[index].extend(range(w.score_from - len(prefix), w.end - len(prefix)))
            bar.update(len(batch))
    bar.close()

    results = []
    for index in range(len(streams)):
        total = float(totals[index])
        mean_nll = total / counts[index]
        results.append(
            PerplexityResult(
                perplexity=math.exp(mean_nll),
                mean_nll=mean_nll,
                scored_tokens=counts[index],
                total_nll=total,
                scored_positions=tuple(positions[index]) if return_positions else None,
            )
        )
    return results


def _score_batch(model, streams, batch, padding_side, pad_token_id):
    """Run one padded forward over ``batch`` windows; return per-token NLL and owning documents."""
    width = max(w.end - w.begin for _, w in batch)
    ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows, columns, targets, owners = [], [], [], []
    for row, (index, w) in enumerate(batch):
        length = w.end - w.begin
        offset = 0 if padding_side == "right" else width - length
        ids[row, offset : offset + length] = torch.tensor(streams[index][w.begin : w.end])
        mask[row, offset : offset + length] = 1
        # The logits at column c predict the token at column c + 1.
        first = offset + (w.score_from - w.begin) - 1
        scored = w.end - w.score_from
        rows.extend([row] * scored)
        columns.extend(range(first, first + scored))
        targets.extend(streams[index][w.score_from : w.end])
        owners.extend([index] * scored)

    # Compute logits only from the first predicting column on: the LM head over the full
    # vocabulary is the largest activation of a forward.
    keep = width - min(columns)
    positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
    device = model.device
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=False,
        logits_to_keep=keep,
    )
    kept_columns = torch.tensor(columns, device=device) - (width - keep)
    logits = out.logits[torch.tensor(rows, device=device), kept_columns]  # [scored, V]
    nll = F.cross_entropy(logits.float(), torch.tensor(targets, device=device), reduction="none")
    return nll, torch.tensor(owners)


def evaluate_perplexity(model, tokens: TokenStream | Sequence[TokenStream], **options) -> PerplexityResult:
    """Compute the sliding-window perplexity of one token stream, or pooled over documents.

    ``tokens`` is one stream (a list of ids or a 1-D tensor) or a list of documents, whose
    results are pooled token-weighted. ``options`` are those of ``evaluate_documents``. For
    a list of documents, ``scored_positions`` stays None: use ``evaluate_documents``.
    """
    if _is_single_stream(tokens):
        return evaluate_documents(model, [tokens], **options)[0]
    return pool_results(evaluate_documents(model, tokens, **options))


# ---------------------------------------------------------------------------------------
# Ablations


def ablation_components(adapter: Adapter, name: str) -> list[Component]:
    """Return the components that the ablation ``name`` removes.

    Names:
        "none": nothing.
        "attention": every attention component, the component draft's removed set. A
            pure Transformer raises the adapter's ValueError, which points to early exit.
        "ssm" / "linear_attention": the recurrent component, which must be the model's
            recurrent kind: the Mamba branch of every Falcon-H1 layer, or every Gated
            DeltaNet layer of Qwen3.5.
        "layer:i": every component of decoder layer i. A Falcon-H1 layer then still runs
            its MLP, while a Qwen3.5 or Qwen2 layer is skipped whole.
        "random:s": ``random_control(adapter, seed=s)``.
    """
    if name == "none":
        return []
    if name == ATTENTION:
        # Raises the adapter's ValueError for a pure Transformer. Nothing is removed here
        # because the returned context manager is never entered.
        adapter.attention_free()
        return adapter.components(ATTENTION)
    if name in ("ssm", "linear_attention"):
        recurrent = adapter.recurrent_kind()
        if recurrent != name:
            has = f"its recurrent kind is {recurrent!r}" if recurrent else "it has no recurrent component"
            raise ValueError(f"{adapter.family} has no {name!r} components: {has}")
        return adapter.components(name)
    if name.startswith("layer:"):
        layer = _parse_index(name, "layer")
        if not 0 <= layer < adapter.num_layers:
            raise ValueError(f"layer {layer} in {name!r} is out of range: the model has layers 0 to {adapter.num_layers - 1}")
        return [c for c in adapter.components() if c.layer == layer]
    if name.startswith("random:"):
        return random_control(adapter, seed=_parse_index(name, "random"))
    raise ValueError(
        f"unknown ablation {name!r}: choose 'none', 'attention', 'ssm', 'linear_attention', "
        "'layer:<index>' or 'random:<seed>'"
    )


def _parse_index(name: str, prefix: str) -> int:
    text = name[len(prefix) + 1 :]
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid ablation {name!r}: expected '{prefix}:<integer>'") from None


def layer_sweep(adapter: Adapter) -> list[str]:
    """Return the ablation names of a layer-wise sweep: "layer:0" to the last layer."""
    return [f"layer:{i}" for i in range(adapter.num_layers)]


def random_control(adapter: Adapter, n: int | None = None, seed: int = 0) -> list[Component]:
    """Choose ``n`` components uniformly at random among all components of the model.

    ``n`` defaults to the number of attention components, which makes the matched control
    of the attention ablation. The choice depends only on ``seed`` and the model's
    composition (``random.Random(seed)``), and is returned in layer order.
    """
    everything = adapter.components()
    if n is None:
        n = len(adapter.components(ATTENTION))
    if not 0 <= n <= len(everything):
        raise ValueError(f"cannot choose {n} components: the model has {len(everything)}")
    chosen = set(random.Random(seed).sample(range(len(everything)), n))
    return [c for i, c in enumerate(everything) if i in chosen]


@dataclass(frozen=True)
class AblationResult:
    """Perplexity of the full and the ablated model on the same tokens."""

    name: str
    components: tuple[Component, ...]
    full: PerplexityResult
    ablated: PerplexityResult

    @property
    def ratio(self) -> float:
        """PPL(ablated) / PPL(full); exactly 1.0 when nothing is removed."""
        return self.ablated.perplexity / self.full.perplexity


def evaluate_ablation(
    model,
    tokens: TokenStream | Sequence[TokenStream],
    name: str,
    *,
    adapter: Adapter | None = None,
    full: PerplexityResult | None = None,
    **options,
) -> AblationResult:
    """Evaluate the ablation ``name`` (see ``ablation_components``) against the full model.

    ``full`` reuses a full-model result computed on the same tokens and options, which
    saves one evaluation per ablation in a sweep. When nothing is removed, the full
    result serves as the ablated one.
    """
    adapter = adapter or get_adapter(model)
    components = ablation_components(adapter, name)
    if full is None:
        full = evaluate_perplexity(model, tokens, adapter=adapter, **options)
    if components:
        ablated = evaluate_perplexity(model, tokens, adapter=adapter, components=components, **options)
    else:
        ablated = full
    return AblationResult(name=name, components=tuple(components), full=full, ablated=ablated)


def ablation_ratio(model, tokens: TokenStream | Sequence[TokenStream], name: str, **options) -> float:
    """Return PPL(ablated) / PPL(full) for the ablation ``name``; options as ``evaluate_ablation``."""
    return evaluate_ablation(model, tokens, name, **options).ratio
