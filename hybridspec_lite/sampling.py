"""Token choice and speculative acceptance: greedy and speculative sampling.

Speculative sampling follows Leviathan, Kalman and Matias, "Fast Inference from
Transformers via Speculative Decoding" (ICML 2023), Algorithm 1, and Chen et al.,
"Accelerating Large Language Model Decoding with Speculative Sampling" (2023): accept draft
token x with probability min(1, p(x) / q(x)); on the first rejection sample from the
residual norm(max(0, p - q)); when all k drafts are accepted, sample a bonus token from p.
The emitted tokens are then distributed exactly as samples from p, whatever q is.

Temperature, top-k and top-p are applied through transformers' own logits warpers, to
draft and target alike, so that q and p are the processed distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding mode: greedy when ``do_sample`` is False, else warped sampling."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None  # None or 0 keeps the whole vocabulary
    top_p: float | None = None  # None or 1.0 keeps the whole vocabulary

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}; use do_sample=False for greedy")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def describe(self) -> str:
        if not self.do_sample:
            return "greedy"
        return f"sampling (temperature {self.temperature}, top-k {self.top_k or 'off'}, top-p {self.top_p or 'off'})"


class Sampler:
    """Turns logits into tokens and probabilities under one ``SamplingConfig``."""

    def __init__(self, config: SamplingConfig, generator: torch.Generator | None = None):
        self.config = config
        self.generator = generator
        warpers = []
        if config.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            warpers.append(TopKLogitsWarper(top_k=config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=config.top_p))
        self.warpers = LogitsProcessorList(warpers)

    @property
    def greedy(self) -> bool:
        return not self.config.do_sample

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Return the processed distribution of ``logits`` [..., V] as float32 probabilities."""
        shape = logits.shape
        flat = logits.reshape(-1, shape[-1]).float()
        # The warpers ignore input_ids; they only read the scores.
        flat = self.warpers(None, flat)
        return torch.softmax(flat, dim=-1).reshape(shape)

    def choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pick one token per row of ``logits`` [B, V]; return (tokens [B], probs [B, V] or None)."""
        if self.greedy:
            return logits.argmax(dim=-1), None
        probs = self.probs(logits)
        return self.draw(probs), probs

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """Sample one token per row from ``probs`` [B, V]."""
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)

    def uniform(self, shape, device) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=device)


def accept_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification: longest prefix of drafts equal to the target's argmax.

    Args:
        draft_tokens: [B, k] drafted tokens.
        target_logits: [B, k + 1, V] target logits at the last emitted token and each draft.

    Returns:
        accepted: [B] number of accepted drafts, 0..k.
        next_tokens: [B] the target's own token after the accepted prefix.
    """
    target_tokens = target_logits.argmax(dim=-1)  # [B, k + 1]
    k = draft_tokens.shape[1]
    matches = (draft_tokens == target_tokens[:, :k]).to(torch.long)
    accepted = matches.cumprod(dim=1).sum(dim=1)
    next_tokens = target_tokens.gather(1, accepted[:, None]).squeeze(1)
    return accepted, next_tokens


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Return norm(max(0, p - q)) over the last axis.

    Where p equals q the residual is all zeros and rejection cannot happen; p is returned
    there so that the result is always a distribution.
    """
    residual = torch.clamp(p - q, min=0)
    total = residual.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, residual / total.clamp_min(torch.finfo(p.dtype).tiny), p)


def accept_sampling(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    sampler: Sampler,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling verification (Leviathan et al. 2023, Algorithm 1).

    Args:
        draft_tokens: [B, k] tokens sampled from the draft.
        draft_probs: [B, k, V] q, the draft's processed distributions they were drawn from.
        target_probs: [B, k + 1, V] p, the target's processed distributions.

    Returns:
        accepted: [B] number of accepted drafts, 0..k.
        next_tokens: [B] a residual sample at the first rejection, or a bonus sample from
            p at position k + 1 when every draft was accepted.
    """
    batch, k = draft_tokens.shape
    p = target_probs[:, :k].gather(2, draft_tokens[..., None]).squeeze(-1)  # [B, k]
    q = draft_probs.gather(2, draft_tokens[..., None]).squeeze(-1)  # [B, k]
    r = sampler.uniform((batch, k), draft_tokens.device)
    # q(x) > 0 because x was drawn from q; accept when r < p/q, written without division.
    ok = (r * q < p).to(torch.long)
    accepted = ok.cumprod(dim=1).sum(dim=1)  # [B]
    rows = torch.arange(batch, device=draft_tokens.device)
    p_next = target_probs[rows, accepted]  # [B, V]
    # Rows that rejected at position accepted < k sample from the residual there.
    q_padded = torch.cat([draft_probs, draft_probs.new_zeros(batch, 1, draft_probs.shape[-1])], dim=1)
    q_next = q_padded[rows, accepted]  # zeros where every draft was accepted
    next_tokens = sampler.draw(residual_distribution(p_next, q_next))
    return accepted, next_tokens
