"""Component-aware self-speculative decoding for hybrid language models."""

__version__ = "0.1.0"

from .adapters import Component, get_adapter
from .decode import GenerationOutput, plain_generate, speculative_generate
from .drafts import ComponentDraft, EarlyExitDraft, SelfDraft, make_draft
from .metrics import RunMetrics
from .sampling import SamplingConfig
from .zoo import list_models, load, model_card

__all__ = [
    "Component",
    "ComponentDraft",
    "EarlyExitDraft",
    "GenerationOutput",
    "RunMetrics",
    "SamplingConfig",
    "SelfDraft",
    "get_adapter",
    "list_models",
    "load",
    "make_draft",
    "model_card",
    "plain_generate",
    "speculative_generate",
]
