"""Per-round time profile of ``speculative_generate``, by wrapping its phases with timers.

The wrappers replace, for the duration of a ``with`` block, the module-level functions that
``hybridspec_lite.decode`` calls for each phase, and the draft's own methods. Each timer
records exclusive time: a phase nested in another (the draft's rollback inside
``Draft.propose``) is charged to its own phase only. What no timer covers, divided by the
number of rounds, is the loop's Python overhead.

Phases:

- ``draft``: the k draft forwards and their token choice;
- ``verify``: the one target forward;
- ``accept``: the acceptance decision, its transfer to the host and per-row bookkeeping;
- ``rollback``: target and draft rollback and cache compaction;
- ``prefill``: once per generation, with the draft's set-up.

On CUDA every timer synchronises the device, so a profiled run is slower than a timed one.
The benchmarks never use a profiled run for throughput.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict

import torch

import hybridspec_lite

PHASES = ("draft", "verify", "accept", "rollback")


class RoundProfiler:
    """Exclusive seconds per phase, summed over every generation run inside ``active()``."""

    def __init__(self, device: torch.device, package=hybridspec_lite):
        # ``package`` may be another copy of hybridspec_lite imported under its own name.
        self.decode = package.decode
        self.drafts = package.drafts
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.total_seconds = 0.0
        self._children: list[float] = []

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def timed(self, phase: str, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            self._children.append(0.0)
            start = self._now()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = self._now() - start
                nested = self._children.pop()
                self.seconds[phase] += elapsed - nested
                self.calls[phase] += 1
                if self._children:
                    self._children[-1] += elapsed
        return wrapper

    @contextlib.contextmanager
    def active(self, draft):
        """Time the phases of every ``speculative_generate`` call with ``draft`` in this block."""
        decode, drafts = self.decode, self.drafts
        patches = [
            (decode, "prefill", "prefill"),
            (decode, "verify", "verify"),
            (decode, "_accept", "accept"),
            (decode, "_emit_round", "accept"),
            (decode, "rollback", "rollback"),
            (decode, "compact", "rollback"),
            (drafts, "rollback", "rollback"),
            (drafts, "rollback_cache", "rollback"),
            (draft, "prepare", "prefill"),
            (draft, "propose", "draft"),
            (draft, "accepted", "rollback"),
        ]
        originals = []
        try:
            for owner, name, phase in patches:
                # Earlier versions of the package name some of these functions differently.
                if not hasattr(owner, name):
                    continue
                original = getattr(owner, name)
                originals.append((owner, name, original, name in vars(owner)))
                setattr(owner, name, self.timed(phase, original))
            yield self
        finally:
            for owner, name, original, own_attribute in reversed(originals):
                if own_attribute:
                    setattr(owner, name, original)
                else:
                    delattr(owner, name)

    def run(self, generate):
        """Call ``generate()`` (one ``speculative_generate``), adding its wall time and rounds."""
        start = self._now()
        out = generate()
        self.total_seconds += self._now() - start
        return out

    @property
    def rounds(self) -> int:
        """Verification forwards so far: one per round."""
        return self.calls["verify"]

    def per_round(self) -> dict[str, float]:
        """Return seconds per round of each phase and of the uncovered Python overhead."""
        covered = sum(self.seconds[p] for p in PHASES) + self.seconds["prefill"]
        result = {phase: self.seconds[phase] / self.rounds for phase in PHASES}
        result["overhead"] = (self.total_seconds - covered) / self.rounds
        result["round"] = (self.total_seconds - self.seconds["prefill"]) / self.rounds
        return result
