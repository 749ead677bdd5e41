"""Drafts: ways to propose k tokens with a subgraph of the target model itself.

Each draft proposes tokens from the target's current position and, after verification,
brings its own state in line with the accepted prefix. Strategies:

- ``ComponentDraft``: the model with every attention component removed. With
  ``state="shared"`` each round starts from the target's own recurrent states (no draft
  prefill, no draft cache) and rolls them back afterwards. With ``state="own"`` the
  attention-free model keeps its own recurrent states over the whole sequence, which makes
  it exactly the model that an attention-ablation perplexity measures.
- ``EarlyExitDraft``: the first E decoder layers, then the final norm and LM head
  (LayerSkip-style), running on the target's cache of those layers and rolled back.
- ``SelfDraft``: the full model drafts for itself; every draft is accepted. A reference for
  tests and for the cost of the loop.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .adapters import Adapter
from .sampling import Sampler
from .state import DecodeState, rollback_cache, start_recording


class Draft:
    """Base class of a draft strategy."""

    name = "draft"

    def prepare(self, adapter: Adapter, state: DecodeState, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Set up per-generation state after the target's prefill of ``input_ids`` [B, P]."""

    def propose(
        self,
        adapter: Adapter,
        state: DecodeState,
        last_cached: torch.Tensor,
        pending: torch.Tensor,
        k: int,
        sampler: Sampler,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draft ``k`` tokens after ``pending`` [B], the last emitted token (not yet cached).

        ``last_cached`` [B] is the last token already in the target's cache. Returns the
        drafted tokens [B, k] and, when sampling, the draft distributions q [B, k, V].
        The target's state must be unchanged when this returns.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement propose()")

    def accepted(self, adapter: Adapter, state: DecodeState, accepted: list[int], k: int) -> None:
        """Follow the target to the accepted prefix: ``accepted[b]`` of the ``k`` drafts, on the host."""

    def _step_loop(self, forward, first_input: torch.Tensor, k: int, sampler: Sampler):
        """Run ``k`` autoregressive draft steps; ``forward(ids, step)`` returns last logits [B, V]."""
        tokens, probs = [], []
        ids = first_input
        for step in range(k):
            logits = forward(ids, step)
            token, q = sampler.choose(logits)
            tokens.append(token)
            if q is not None:
                probs.append(q)
            ids = token[:, None]
        drafted = torch.stack(tokens, dim=1)  # [B, k]
        return drafted, (torch.stack(probs, dim=1) if probs else None)


class SelfDraft(Draft):
    """The full target model as its own draft, on its own cache, rolled back after drafting."""

    name = "self"

    def propose(self, adapter, state, last_cached, pending, k, sampler):
        model = adapter.model

        def forward(ids, step):
            out = model(
                input_ids=ids,
                cache=state.cache,
                attention_mask=state.forward_mask(step + 1),
                position_ids=state.position_ids(step + 1)[:, step:],
                use_cache=True,
                logits_to_keep=1,
            )
            return out.logits[:, -1]

        drafted, probs = self._step_loop(forward, pending[:, None], k, sampler)
        rollback_cache(state.cache, k)
        return drafted, probs


class ComponentDraft(Draft):
    """The target with every attention component removed (an attention-free subgraph)."""

    name = "component"

    def __init__(self, state: str = "shared"):
        if state not in ("shared", "own"):
            raise ValueError(f"component draft state must be 'shared' or 'own', got {state!r}")
        self.state = state
        self.own_cache: DynamicCache | None = None

    def prepare(self, adapter, state, input_ids, attention_mask):
        # Raises for a pure Transformer before any work is done.
        with adapter.attention_free():
            pass
        if self.state == "own":
            self.own_cache = DynamicCache(config=adapter.model.config)
            with adapter.attention_free():
                adapter.model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    cache=self.own_cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            # Level with the target for the first round only; afterwards the own cache
            # stays one token behind it (see accepted()).
            self._level = True
            start_recording(self.own_cache, 2)

    def propose(self, adapter, state, last_cached, pending, k, sampler):
        model = adapter.model
        cache = state.cache if self.state == "shared" else self.own_cache

        def forward(ids, step):
            # Attention is not computed, so no mask or positions reach a used module.
            out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1]

        if self.state == "shared" or self._level:
            first = pending[:, None]
            self._level = False
        else:
            first = torch.stack([last_cached, pending], dim=1)
        with adapter.attention_free():
            drafted, probs = self._step_loop(forward, first, k, sampler)
        if self.state == "shared":
            rollback_cache(state.cache, k, kv=False)
        return drafted, probs

    def accepted(self, adapter, state, accepted, k):
        if self.state != "own":
            return
        # The own cache now ends k tokens after the target's old cached prefix (it fed
        # pending and d1 .. d(k-1), plus last_cached unless it was level). Keep it one token
        # behind the target's new cached prefix, so the next round feeds two tokens.
        rollback_cache(self.own_cache, [max(k - a, 0) for a in accepted], kv=False)


class EarlyExitDraft(Draft):
    """The first ``exit_layer`` decoder layers with the final norm and LM head (LayerSkip-style)."""

    name = "early-exit"

    def __init__(self, exit_layer: int):
        if exit_layer < 1:
            raise ValueError(f"exit layer must be >= 1, got {exit_layer}")
        self.exit_layer = exit_layer

    def prepare(self, adapter, state, input_ids, attention_mask):
        with adapter.truncated(self.exit_layer):
            pass

    def propose(self, adapter, state, last_cached, pending, k, sampler):
        model = adapter.model

        def forward(ids, step):
            out = model(
                input_ids=ids,
                cache=state.cache,
                attention_mask=state.forward_mask(step + 1),
                position_ids=state.position_ids(step + 1)[:, step:],
                use_cache=True,
                logits_to_keep=1,
            )
            return out.logits[:, -1]

        with adapter.truncated(self.exit_layer):
            drafted, probs = self._step_loop(forward, pending[:, None], k, sampler)
        rollback_cache(state.cache, k, num_layers=self.exit_layer)
        return drafted, probs


def make_draft(kind: str, *, state: str = "shared", exit_layer: int | None = None) -> Draft:
    """Build a draft from CLI or notebook settings."""
    if kind == "component":
        return ComponentDraft(state=state)
    if kind == "early-exit":
        if exit_layer is None:
            raise ValueError("the early-exit draft needs an exit layer (--exit-layer E, 1 <= E <= number of layers)")
        return EarlyExitDraft(exit_layer)
    if kind == "self":
        return SelfDraft()
    raise ValueError(f"unknown draft {kind!r}: choose 'component', 'early-exit' or 'self'")
