"""The speculative decode loop: prefill, then rounds of draft, verify, accept, roll back.

One round for every row of the batch at once:

1. draft: the draft proposes k tokens after each row's pending token (the last emitted
   token, which the target has not yet seen);
2. verify: one forward of the full model over [pending, d1 .. dk] gives the target's
   logits at all k + 1 positions;
3. accept: greedy prefix matching or speculative sampling decides, per row, how many
   drafts to keep and which token the target adds after them;
4. roll back: every cache layer returns, per row, to the accepted position.

``plain_generate`` is the same stack without drafts: the baseline of every speedup.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from .adapters import Adapter, get_adapter
from .drafts import Draft
from .metrics import RunMetrics, summed
from .sampling import Sampler, SamplingConfig, accept_greedy, accept_sampling
from .state import DecodeState, compact, rollback, start_recording

logger = logging.getLogger(__name__)


@dataclass
class GenerationOutput:
    """New tokens per row (prompt excluded) and the run's metrics."""

    tokens: list[list[int]]
    rows: list[RunMetrics]
    total: RunMetrics
    finished_by_eos: list[bool] = field(default_factory=list)


def pad_prompts(prompts: Sequence[Sequence[int]], pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (input_ids [B, P], attention_mask [B, P])."""
    if len(prompts) == 0:
        raise ValueError("no prompts given: pass at least one prompt")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    return ids, mask


def _normalise_inputs(model, input_ids, attention_mask, pad_token_id):
    if isinstance(input_ids, torch.Tensor):
        if input_ids.ndim == 1:
            input_ids = input_ids[None, :]
        if input_ids.shape[-1] == 0:
            raise ValueError("the prompt is empty: give at least one token")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"prompts {empty} are empty (all padding): every prompt needs at least one token")
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("prompts must be left-padded: the last column of attention_mask must be all ones")
    else:
        if pad_token_id is None:
            pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        input_ids, attention_mask = pad_prompts(input_ids, pad_token_id)
    device = model.device
    return input_ids.to(device), attention_mask.to(device)


def _check_lengths(model, input_ids, max_new_tokens, k):
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if k < 1:
        raise ValueError(f"k (draft tokens per round) must be >= 1, got {k}")
    limit = getattr(model.config, "max_position_embeddings", None)
    needed = input_ids.shape[1] + max_new_tokens + k
    if limit is not None and needed > limit:
        raise ValueError(
            f"prompt of {input_ids.shape[1]} tokens + max_new_tokens {max_new_tokens} + k {k} = {needed} "
            f"positions exceeds the model's max_position_embeddings {limit}; shorten the prompt or "
            "lower max_new_tokens"
        )


def _eos_set(eos_token_id) -> set[int]:
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return set(int(t) for t in eos_token_id)


class _Rows:
    """Per-row output, budget and stopping."""

    def __init__(self, batch: int, max_new_tokens: int, eos: set[int], k: int):
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.metrics = [RunMetrics(k=k) for _ in range(batch)]
        self.done = [False] * batch
        self.by_eos = [False] * batch
        self.max_new_tokens = max_new_tokens
        self.eos = eos

    def remaining(self, row: int) -> int:
        return 0 if self.done[row] else self.max_new_tokens - len(self.tokens[row])

    def max_remaining(self) -> int:
        return max(self.remaining(b) for b in range(len(self.tokens)))

    def all_done(self) -> bool:
        return all(self.done)

    def emit(self, row: int, block: list[int]) -> int:
        """Append ``block`` up to the budget and the first EOS; return how many were emitted."""
        if self.done[row]:
            return 0
        block = block[: self.remaining(row)]
        for i, token in enumerate(block):
            if token in self.eos:
                block = block[: i + 1]
                self.by_eos[row] = True
                break
        self.tokens[row].extend(block)
        self.metrics[row].new_tokens += len(block)
        if self.by_eos[row] or len(self.tokens[row]) >= self.max_new_tokens:
            self.done[row] = True
        return len(block)


class _Clock:
    """Time per phase and in total.

    On CUDA the phase boundaries are CUDA events, read once when the run ends, so timing adds
    no device synchronisation inside a round. Phase times are then device time.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = {"draft": 0.0, "verify": 0.0}
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self.start = time.perf_counter()

    def mark(self):
        """Return a phase boundary: a recorded CUDA event, or the host time."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def phase(self, name: str, since):
        now = self.mark()
        if self.cuda:
            self._events.append((name, since, now))
        else:
            self.seconds[name] += now - since
        return now

    def stop(self) -> float:
        """Wait for the device, add up the phases and return the total wall time in seconds."""
        if self.cuda:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                self.seconds[name] += start.elapsed_time(end) / 1000
            self._events.clear()
        return time.perf_counter() - self.start


def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[DecodeState, torch.Tensor]:
    """Run the prompt [B, P] through the model; return its state and the last logits [B, V]."""
    cache = DynamicCache(config=model.config)
    positions = (attention_mask.cumsum(dim=1) - 1).clamp_min(0)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    state = DecodeState(cache=cache, attention_mask=attention_mask, lengths=attention_mask.sum(dim=1))
    return state, out.logits[:, -1]


def verify(model, state: DecodeState, pending: torch.Tensor, drafted: torch.Tensor) -> torch.Tensor:
    """Score [pending, drafts] in one forward; return target logits [B, k + 1, V]."""
    block = torch.cat([pending[:, None], drafted], dim=1)  # [B, k + 1]
    width = block.shape[1]
    mask = state.forward_mask(width)
    out = model(
        input_ids=block,
        cache=state.cache,
        attention_mask=mask,
        position_ids=state.position_ids(width),
        use_cache=True,
    )
    state.advance(width, extended_mask=mask)
    return out.logits


def speculative_generate(
    model,
    input_ids,
    draft: Draft,
    *,
    k: int = 2,
    max_new_tokens: int = 32,
    eos_token_id: int | Sequence[int] | None = None,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
    compaction_slack: int | None = None,
    adapter: Adapter | None = None,
    on_round: Callable[[DecodeState, list[list[int]]], None] | None = None,
) -> GenerationOutput:
    """Generate with draft-then-verify rounds; the output equals the target's own decoding.

    Args:
        model: a supported transformers causal LM (see ``adapters.get_adapter``).
        input_ids: [B, P] left-padded token ids with ``attention_mask``, or a list of
            token lists of any lengths (padded here).
        draft: the draft strategy (``drafts.make_draft``).
        k: tokens drafted per round, >= 1. The last round drafts fewer when the budget
            leaves less room.
        max_new_tokens: exact number of new tokens per row unless an EOS comes first.
        eos_token_id: one id or several; the first one emitted ends its row, inclusive.
        sampling: greedy by default; otherwise speculative sampling with the same
            temperature, top-k and top-p on draft and target.
        generator: the random generator for sampling (seed it for repeatable output).
        compaction_slack: hole slots tolerated before the cache is compacted; default
            4 * (k + 1). See ``state.compact``.
        on_round: called after every round with the target state and the tokens emitted
            so far per row; the state then contains the prompt and every emitted token but
            the last. For inspection only: it must not change the state.
    """
    sampling = sampling or SamplingConfig()
    adapter = adapter or get_adapter(model)
    input_ids, attention_mask = _normalise_inputs(model, input_ids, attention_mask, pad_token_id)
    _check_lengths(model, input_ids, max_new_tokens, k)
    slack = compaction_slack if compaction_slack is not None else 4 * (k + 1)
    sampler = Sampler(sampling, generator)
    rows = _Rows(input_ids.shape[0], max_new_tokens, _eos_set(eos_token_id), k)
    clock = _Clock(input_ids.device)

    with torch.inference_mode():
        state, logits = prefill(model, input_ids, attention_mask)
        first, _ = sampler.choose(logits)
        start_recording(state.cache, k + 1)
        draft.prepare(adapter, state, input_ids, attention_mask)
        for row, token in enumerate(first.tolist()):
            rows.emit(row, [token])
        pending, last_cached = first, input_ids[:, -1]

        while not rows.all_done():
            k_round = min(k, rows.max_remaining() - 1)
            since = clock.mark()
            if k_round > 0:
                drafted, draft_probs = draft.propose(adapter, state, last_cached, pending, k_round, sampler)
            else:
                drafted, draft_probs = pending[:, None][:, :0], None
            since = clock.phase("draft", since)
            logits = verify(model, state, pending, drafted)  # [B, k_round + 1, V]
            clock.phase("verify", since)

            accepted, next_tokens = _accept(sampler, drafted, draft_probs, logits)
            accepted_counts = _emit_round(rows, drafted, accepted, next_tokens, k_round)
            rollback(state, [k_round - a for a in accepted_counts])
            block = torch.cat([pending[:, None], drafted], dim=1)
            last_cached = block.gather(1, accepted[:, None]).squeeze(1)
            pending = next_tokens
            if k_round > 0:
                draft.accepted(adapter, state, accepted_counts, k_round)
            if input_ids.shape[0] > 1:
                compact(state, slack)
            if on_round is not None:
                on_round(state, rows.tokens)

    return _finish(rows, clock)


def _accept(sampler, drafted, draft_probs, logits):
    if sampler.greedy:
        return accept_greedy(drafted, logits)
    if draft_probs is None:
        draft_probs = logits.new_zeros(drafted.shape[0], drafted.shape[1], logits.shape[-1])
    return accept_sampling(drafted, draft_probs, sampler.probs(logits), sampler)


def _emit_round(rows: _Rows, drafted, accepted, next_tokens, k_round: int) -> list[int]:
    """Emit each row's accepted drafts and next token; return the accepted counts [B] on the host."""
    # The only host synchronisation of a round: the acceptance decision, in one transfer.
    decided = torch.cat([accepted[:, None], next_tokens[:, None], drafted], dim=1).tolist()  # [B, 2 + k_round]
    counts = []
    for row, (a, nxt, *row_drafts) in enumerate(decided):
        counts.append(a)
        if rows.done[row]:
            continue
        emitted = rows.emit(row, row_drafts[:a] + [nxt])
        rows.metrics[row].record_round(k_round, a, emitted)
    return counts


def _finish(rows: _Rows, clock: _Clock) -> GenerationOutput:
    total_seconds = clock.stop()
    total = summed(rows.metrics)
    total.k = rows.metrics[0].k
    total.draft_seconds = clock.seconds["draft"]
    total.verify_seconds = clock.seconds["verify"]
    total.total_seconds = total_seconds
    total.other_seconds = total_seconds - total.draft_seconds - total.verify_seconds
    return GenerationOutput(tokens=rows.tokens, rows=rows.metrics, total=total, finished_by_eos=rows.by_eos)


def plain_generate(
    model,
    input_ids,
    *,
    max_new_tokens: int = 32,
    eos_token_id: int | Sequence[int] | None = None,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
) -> GenerationOutput:
    """Decode one token per forward on the same cache and masks: the speedup baseline."""
    sampling = sampling or SamplingConfig()
    input_ids, attention_mask = _normalise_inputs(model, input_ids, attention_mask, pad_token_id)
    _check_lengths(model, input_ids, max_new_tokens, 1)
    sampler = Sampler(sampling, generator)
    rows = _Rows(input_ids.shape[0], max_new_tokens, _eos_set(eos_token_id), 0)
    clock = _Clock(input_ids.device)
    with torch.inference_mode():
        state, logits = prefill(model, input_ids, attention_mask)
        token, _ = sampler.choose(logits)
        while True:
            for row, t in enumerate(token.tolist()):
                if not rows.done[row]:
                    rows.emit(row, [t])
                    rows.metrics[row].record_round(0, 0, 1)
            if rows.all_done():
                break
            since = clock.mark()
            logits = verify(model, state, token, token[:, None][:, :0])[:, -1]
            clock.phase("verify", since)
            token, _ = sampler.choose(logits)
    return _finish(rows, clock)
