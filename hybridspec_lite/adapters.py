"""Model adapters: the composition of a hybrid model and the removal of its components.

An adapter wraps one transformers causal LM without copying or re-implementing it. It
reports which sequence mixers each decoder layer contains and can run the model with a chosen
set of them removed. A removed component is not computed at all: its module is replaced,
for the duration of a ``with`` block, by a stub that returns what the layer would see if
the component did not exist.

Supported families (transformers 5.25):

- Falcon-H1 (``FalconH1ForCausalLM``): parallel hybrid. Every layer runs a Mamba-2 mixer
  and attention on the same normalised input and sums their outputs.
- Qwen3.5 (``Qwen3_5ForCausalLM``): sequential hybrid. Each layer contains either a Gated
  DeltaNet linear-attention mixer or full attention, as ``config.layer_types`` says.
- Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``): pure Transformer control.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

ATTENTION = "attention"
SSM = "ssm"  # Mamba-2 state-space mixer
LINEAR_ATTENTION = "linear_attention"  # Gated DeltaNet

PARALLEL = "parallel"
SEQUENTIAL = "sequential"
TRANSFORMER = "transformer"


@dataclass(frozen=True)
class Component:
    """One sequence mixer of one decoder layer."""

    layer: int
    kind: str  # ATTENTION, SSM or LINEAR_ATTENTION


class Adapter:
    """Base class: composition and component removal for one model family."""

    family: str = ""
    composition: str = ""

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_components(self) -> list[tuple[str, ...]]:
        """Return the mixer kinds of each decoder layer, in layer order."""
        raise NotImplementedError(f"{type(self).__name__} does not implement layer_components()")

    def components(self, kind: str | None = None) -> list[Component]:
        """Return every component of the model, or only those of one kind."""
        found = []
        for layer, kinds in enumerate(self.layer_components()):
            found.extend(Component(layer, k) for k in kinds if kind is None or k == kind)
        return found

    def describe(self) -> dict:
        """Return the composition pattern and each layer's components as plain data."""
        return {
            "family": self.family,
            "composition": self.composition,
            "num_layers": self.num_layers,
            "layers": [list(kinds) for kinds in self.layer_components()],
        }

    def recurrent_kind(self) -> str | None:
        """Return the kind of the attention-free mixer, or None for a pure Transformer."""
        return None

    def _stub_for(self, component: Component) -> tuple[nn.Module, object]:
        """Return (module, forward) that replaces ``component`` while it is removed."""
        raise NotImplementedError(f"{type(self).__name__} cannot remove {component}")

    @contextlib.contextmanager
    def removed(self, components: Iterable[Component]) -> Iterator[None]:
        """Run the model with ``components`` removed (not computed) inside the block.

        Nothing is removed for an empty iterable. The stubs are instance attributes that
        shadow the modules' ``forward``; leaving the block restores the originals even when
        the block raises.
        """
        components = list(dict.fromkeys(components))
        valid = set(self.components())
        for component in components:
            if component not in valid:
                raise ValueError(
                    f"{component} is not a component of this {self.family} model; "
                    f"valid kinds per layer: {self.layer_components()}"
                )
        patched: list[nn.Module] = []
        try:
            for component in components:
                module, stub = self._stub_for(component)
                if "forward" in module.__dict__:
                    raise ValueError(f"{component} is already removed")
                module.forward = stub
                patched.append(module)
            yield
        finally:
            for module in patched:
                del module.forward

    def attention_free(self) -> contextlib.AbstractContextManager:
        """Remove every attention component: the component draft's subgraph."""
        if self.recurrent_kind() is None:
            raise ValueError(
                f"{self.family} is a pure Transformer: removing attention leaves no sequence "
                "mixer, so it has no component draft. Use the early-exit draft "
                "(draft='early-exit' with an exit layer) instead."
            )
        return self.removed(self.components(ATTENTION))

    @contextlib.contextmanager
    def truncated(self, num_layers: int) -> Iterator[None]:
        """Run only the first ``num_layers`` decoder layers, then the final norm and LM head."""
        if not 1 <= num_layers <= self.num_layers:
            raise ValueError(
                f"exit layer {num_layers} is out of range: this model has {self.num_layers} "
                f"decoder layers, so choose an exit layer from 1 to {self.num_layers}"
            )
        base = self.model.model
        full = base.layers
        base.layers = nn.ModuleList(list(full)[:num_layers])
        try:
            yield
        finally:
            base.layers = full


def _zeros_like_input(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return torch.zeros_like(hidden_states)


def _identity_layer(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return hidden_states


class FalconH1Adapter(Adapter):
    """Parallel hybrid: removing a component zeroes one branch of the layer's sum."""

    family = "falcon_h1"
    composition = PARALLEL

    def layer_components(self) -> list[tuple[str, ...]]:
        return [(SSM, ATTENTION)] * self.num_layers

    def recurrent_kind(self) -> str:
        return SSM

    def _stub_for(self, component: Component):
        layer = self.layers[component.layer]
        if component.kind == ATTENTION:
            # FalconH1Attention returns (output, weights); the layer multiplies the output
            # by attention_out_multiplier and adds it to the Mamba branch.
            def skip_attention(hidden_states, *args, **kwargs):
                return torch.zeros_like(hidden_states), None

            return layer.self_attn, skip_attention
        return layer.mamba, _zeros_like_input


class Qwen35Adapter(Adapter):
    """Sequential hybrid: removing a layer's only mixer removes the whole layer.

    A Qwen3.5 layer is mixer -> residual -> MLP -> residual. Without its mixer the layer
    would be an MLP-only block that the model never saw in training; the study removes the
    full-attention layers outright, so a removed component skips its entire layer.
    """

    family = "qwen3_5"
    composition = SEQUENTIAL

    def layer_components(self) -> list[tuple[str, ...]]:
        kinds = {"linear_attention": LINEAR_ATTENTION, "full_attention": ATTENTION}
        layer_types = self.config.layer_types[: self.num_layers]
        unknown = sorted(set(layer_types) - set(kinds))
        if unknown:
            raise NotImplementedError(f"Qwen3.5 layer types {unknown} are not supported")
        return [(kinds[t],) for t in layer_types]

    def recurrent_kind(self) -> str:
        return LINEAR_ATTENTION

    def _stub_for(self, component: Component):
        return self.layers[component.layer], _identity_layer


class Qwen2Adapter(Adapter):
    """Pure Transformer control: attention is the only mixer."""

    family = "qwen2"
    composition = TRANSFORMER

    def layer_components(self) -> list[tuple[str, ...]]:
        return [(ATTENTION,)] * self.num_layers

    def _stub_for(self, component: Component):
        return self.layers[component.layer], _identity_layer


ADAPTERS = {
    "FalconH1ForCausalLM": FalconH1Adapter,
    "Qwen3_5ForCausalLM": Qwen35Adapter,
    "Qwen2ForCausalLM": Qwen2Adapter,
}


def get_adapter(model: nn.Module) -> Adapter:
    """Return the adapter for ``model``; raise ValueError naming the supported classes."""
    name = type(model).__name__
    if name not in ADAPTERS:
        supported = ", ".join(sorted(ADAPTERS))
        raise ValueError(
            f"unsupported architecture {name}: hybridspec_lite supports {supported}. "
            "Load the model through one of these classes, e.g. with AutoModelForCausalLM."
        )
    return ADAPTERS[name](model)
