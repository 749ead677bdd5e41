"""Metrics of a speculative run, defined once for the library, the CLI and the notebooks.

- alpha (acceptance rate) = sum of accepted draft tokens / sum of drafted tokens, summed
  over every round and row (a token-weighted rate, not a mean of per-prompt rates).
- tau (mean accepted length) = tokens emitted per verification round, the target's own
  token included. Under i.i.d. acceptance, tau = (1 - alpha^(k+1)) / (1 - alpha).
- acceptance at draft position i (1..k) = rounds whose i-th draft was accepted / rounds
  that drafted at least i tokens. It is unconditional: a draft after a rejection counts as
  not accepted.
- ideal speedup with draft/target cost ratio c: S = (1 - alpha^(k+1)) / ((1 - alpha)(k c + 1))
  (Leviathan et al., 2023).

Counts come from acceptance decisions. When an EOS token or the token budget ends a row
inside an accepted block, the tokens after it are accepted but not emitted, so tau counts
emitted tokens while alpha counts decisions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RunMetrics:
    """Counters and timings of one generation, for one row or summed over rows."""

    k: int = 0
    rounds: int = 0  # verification forwards that emitted tokens for this row
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0  # tokens emitted by verification rounds (the prefill's token is apart)
    new_tokens: int = 0  # every generated token, the prefill's first one included
    position_drafted: list[int] = field(default_factory=list)  # index i-1: rounds with >= i drafts
    position_accepted: list[int] = field(default_factory=list)
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    other_seconds: float = 0.0  # prefill, acceptance, rollback, bookkeeping
    total_seconds: float = 0.0

    def record_round(self, drafted: int, accepted: int, emitted: int) -> None:
        """Add one verification round of one row."""
        if len(self.position_drafted) < self.k:
            missing = self.k - len(self.position_drafted)
            self.position_drafted += [0] * missing
            self.position_accepted += [0] * missing
        self.rounds += 1
        self.drafted += drafted
        self.accepted += accepted
        self.emitted += emitted
        for i in range(drafted):
            self.position_drafted[i] += 1
            if i < accepted:
                self.position_accepted[i] += 1

    @property
    def alpha(self) -> float | None:
        """Acceptance rate; None when nothing was drafted."""
        return self.accepted / self.drafted if self.drafted else None

    @property
    def tau(self) -> float | None:
        """Tokens emitted per verification round; None before the first round."""
        return self.emitted / self.rounds if self.rounds else None

    @property
    def acceptance_by_position(self) -> list[float | None]:
        return [a / d if d else None for a, d in zip(self.position_accepted, self.position_drafted)]

    @property
    def tokens_per_second(self) -> float | None:
        return self.new_tokens / self.total_seconds if self.total_seconds > 0 else None

    def __add__(self, other: "RunMetrics") -> "RunMetrics":
        width = max(len(self.position_drafted), len(other.position_drafted))

        def padded(values: list[int]) -> list[int]:
            return values + [0] * (width - len(values))

        return RunMetrics(
            k=max(self.k, other.k),
            rounds=self.rounds + other.rounds,
            drafted=self.drafted + other.drafted,
            accepted=self.accepted + other.accepted,
            emitted=self.emitted + other.emitted,
            new_tokens=self.new_tokens + other.new_tokens,
            position_drafted=[a + b for a, b in zip(padded(self.position_drafted), padded(other.position_drafted))],
            position_accepted=[a + b for a, b in zip(padded(self.position_accepted), padded(other.position_accepted))],
            draft_seconds=self.draft_seconds + other.draft_seconds,
            verify_seconds=self.verify_seconds + other.verify_seconds,
            other_seconds=self.other_seconds + other.other_seconds,
            total_seconds=self.total_seconds + other.total_seconds,
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(
            alpha=self.alpha,
            tau=self.tau,
            acceptance_by_position=self.acceptance_by_position,
            tokens_per_second=self.tokens_per_second,
        )
        return data


def summed(metrics: list[RunMetrics]) -> RunMetrics:
    """Sum per-row or per-prompt metrics into one token-weighted total."""
    total = RunMetrics()
    for m in metrics:
        total = total + m
    return total


def expected_tau(alpha: float, k: int) -> float:
    """Tokens per round under i.i.d. acceptance at rate alpha with k drafts."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def ideal_speedup(alpha: float, k: int, cost_ratio: float) -> float:
    """Leviathan et al. (2023) speedup with draft/target cost ratio ``cost_ratio``."""
    return expected_tau(alpha, k) / (k * cost_ratio + 1)
