"""Component-aware self-speculative decoding for hybrid language models."""

from .adapters import Component, get_adapter
from .decode import GenerationOutput, plain_generate, speculative_generate
from .drafts import ComponentDraft, EarlyExitDraft, SelfDraft, make_draft
from .metrics import RunMetrics
from .sampling import SamplingConfig

__all__ = [
    "Component",
    "ComponentDraft",
    "EarlyExitDraft",
    "GenerationOutput",
    "RunMetrics",
    "SamplingConfig",
    "SelfDraft",
    "get_adapter",
    "make_draft",
    "plain_generate",
    "speculative_generate",
]
__version__ = "0.1.0"
