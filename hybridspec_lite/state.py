"""Decoding state and its exact per-row rollback.

One ``DecodeState`` contains everything the target model has seen for a batch of rows: a
transformers ``DynamicCache`` (whose layers each own their entry: keys and values for
attention, a causal-conv window and a recurrent state for Mamba-2 and Gated DeltaNet
mixers), the 2D attention mask over the cache slots, and each row's count of valid tokens.

Rows are left-padded at prefill. When rows reject different numbers of drafted tokens, the
cache is cropped by the smallest count and the remaining rejected slots of the other rows
become holes: masked out of attention and skipped by the position ids. ``compact`` removes
the holes when they exceed a slack, which bounds the cache at
``max(valid tokens per row) + slack`` slots.

Recurrent layers cannot be cropped from their final state alone, so rollback relies on
transformers' past recording (``Cache.activate_past_recording``): a forward keeps every
intermediate recurrent state and the full conv input, and ``rollback`` picks, per row, the
state at the accepted position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, LinearAttentionCacheLayerMixin


class RollbackError(RuntimeError):
    """A cache layer cannot return to the requested position."""


@dataclass
class DecodeState:
    """Target-side state of a batch: cache, slot mask and valid lengths per row."""

    cache: DynamicCache
    attention_mask: torch.Tensor  # [B, S] 1 for a valid slot, 0 for padding or a hole
    lengths: torch.Tensor  # [B] valid tokens per row, which is the next position id
    # The same lengths on the host, so that compaction decides without a device sync.
    host_lengths: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.host_lengths:
            self.host_lengths = [int(n) for n in self.lengths.tolist()]

    @property
    def num_slots(self) -> int:
        return self.attention_mask.shape[1]

    def extended_mask(self, new_tokens: int) -> torch.Tensor:
        """Return the slot mask with ``new_tokens`` valid slots appended: [B, S + new_tokens]."""
        ones = self.attention_mask.new_ones(self.attention_mask.shape[0], new_tokens)
        return torch.cat([self.attention_mask, ones], dim=1)

    def forward_mask(self, new_tokens: int) -> torch.Tensor | None:
        """Return the attention mask for a forward of ``new_tokens`` tokens, or None when it is all ones.

        Every valid slot contains one token of its row, so the mask has no padding and no holes
        exactly when the shortest row fills every slot. transformers then builds the same
        causal mask from the cache positions, without checking a 2D mask for padding.
        """
        if min(self.host_lengths) == self.num_slots:
            return None
        return self.extended_mask(new_tokens)

    def position_ids(self, new_tokens: int) -> torch.Tensor:
        """Return position ids for ``new_tokens`` appended tokens: [B, new_tokens]."""
        offsets = torch.arange(new_tokens, device=self.lengths.device)
        return self.lengths[:, None] + offsets[None, :]

    def advance(self, new_tokens: int, extended_mask: torch.Tensor | None = None) -> None:
        """Record that ``new_tokens`` valid slots were appended to every row.

        ``extended_mask`` is ``self.extended_mask(new_tokens)`` when the caller already built it.
        """
        self.attention_mask = self.extended_mask(new_tokens) if extended_mask is None else extended_mask
        self.lengths = self.lengths + new_tokens
        self.host_lengths = [n + new_tokens for n in self.host_lengths]


def start_recording(cache: DynamicCache, max_tokens_per_forward: int) -> None:
    """Make every recurrent layer keep its intermediate states so it can roll back.

    Call it after the prefill: the conv windows are then exactly kernel-sized, and every
    later forward of at most ``max_tokens_per_forward`` tokens can be undone.
    """
    cache.activate_past_recording(recurrent_states_to_keep=max_tokens_per_forward)


def _is_kv(layer) -> bool:
    return isinstance(layer, DynamicLayer) and layer.is_initialized


def _is_recurrent(layer) -> bool:
    return isinstance(layer, LinearAttentionCacheLayerMixin) and any(
        layer.is_conv_states_initialized.values()
    )


class _Removal:
    """Tokens to remove per row, kept on the host; the device copy is made only when rows differ."""

    def __init__(self, remove: int | Sequence[int] | torch.Tensor):
        if isinstance(remove, int):
            self.counts: list[int] | None = None
            self.minimum = self.maximum = remove
        else:
            counts = remove.tolist() if isinstance(remove, torch.Tensor) else list(remove)
            self.counts = [int(n) for n in counts]
            self.minimum, self.maximum = min(self.counts), max(self.counts)
        if self.minimum < 0:
            value = remove if self.counts is None else self.counts
            raise ValueError(f"tokens to remove must be >= 0, got {value}")
        self._on_device: dict[torch.device, torch.Tensor] = {}

    @property
    def uniform(self) -> bool:
        return self.minimum == self.maximum

    def per_row(self, batch: int) -> list[int]:
        return [self.minimum] * batch if self.counts is None else self.counts

    def tensor(self, device: torch.device) -> torch.Tensor:
        """Return the per-row counts [B] on ``device`` (non-uniform removals only)."""
        if device not in self._on_device:
            self._on_device[device] = torch.tensor(self.counts, dtype=torch.long, device=device)
        return self._on_device[device]


def _rollback_recurrent(layer, removal: _Removal) -> None:
    """Return one recurrent layer to ``removal`` tokens before its latest state, per row."""
    if not layer.record_past:
        raise RollbackError(
            f"{type(layer).__name__} does not record past states, so it cannot roll back; "
            "call start_recording() after the prefill"
        )
    max_remove = removal.maximum
    for i in range(layer.number_of_states):
        if layer.is_recurrent_states_initialized[i]:
            history = layer.recurrent_states_history[i]
            if max_remove > len(history):
                raise RollbackError(
                    f"cannot remove {max_remove} tokens: only {len(history)} past recurrent "
                    "states were recorded since the last rollback"
                )
            # history[-r] is the state before the last r recorded tokens. Each entry is a clone
            # that nothing else references, so it can become the live state without a copy.
            if removal.uniform and max_remove > 0:
                layer.recurrent_states[i] = history[len(history) - max_remove]
            elif max_remove > 0:
                # stacked[j] is the state after the j-th recorded token; the last is current.
                current = layer.recurrent_states[i]
                stacked = torch.stack(history[len(history) - max_remove :] + [current])
                rows = torch.arange(current.shape[0], device=current.device)
                chosen = stacked[max_remove - removal.tensor(current.device), rows]
                layer.recurrent_states[i] = chosen.contiguous()
            layer.recurrent_states_history[i] = []
        if layer.is_conv_states_initialized[i]:
            # With recording on, the conv state is the kernel window followed by every token
            # fed since the last rollback: [B, C, K + n].
            conv = layer.conv_states[i]
            kernel = layer.conv_kernel_size[i]
            width = conv.shape[-1]
            if width - max_remove < kernel:
                raise RollbackError(
                    f"cannot remove {max_remove} tokens from a conv window of {width} columns with kernel {kernel}"
                )
            if removal.uniform:
                # The next forward concatenates onto this slice, so a view is enough.
                layer.conv_states[i] = conv[..., width - max_remove - kernel : width - max_remove]
            else:
                ends = width - removal.tensor(conv.device)
                index = ends[:, None] - kernel + torch.arange(kernel, device=conv.device)[None, :]
                index = index[:, None, :].expand(-1, conv.shape[1], -1)
                layer.conv_states[i] = torch.gather(conv, 2, index)
    layer.cumulative_length_linear.sub_(removal.minimum)


def rollback_cache(
    cache: DynamicCache,
    remove: int | Sequence[int] | torch.Tensor,
    *,
    kv: bool = True,
    recurrent: bool = True,
    num_layers: int | None = None,
) -> None:
    """Remove the last ``remove`` fed tokens from the layers of ``cache``, without slot bookkeeping.

    The drafts use it, because the tokens they feed never enter the target's slot mask.
    Attention layers drop the smallest count of every row, and masking the rest is left to
    the caller. The arguments are those of ``rollback``.
    """
    removal = remove if isinstance(remove, _Removal) else _Removal(remove)
    layers = cache.layers[: num_layers if num_layers is not None else len(cache.layers)]
    for layer in layers:
        if recurrent and _is_recurrent(layer):
            _rollback_recurrent(layer, removal)
        if kv and _is_kv(layer) and removal.minimum > 0:
            DynamicLayer.crop(layer, -removal.minimum)


def rollback(
    state: DecodeState,
    remove: int | Sequence[int] | torch.Tensor,
    *,
    kv: bool = True,
    recurrent: bool = True,
    num_layers: int | None = None,
) -> None:
    """Remove the last ``remove[b]`` fed tokens of each row b from the cache.

    Args:
        state: the state whose cache is rolled back in place.
        remove: tokens to remove, per row ([B] host ints or a tensor) or one count for
            every row; 0 keeps a row as it is. Host ints cost no device sync; a tensor is
            copied to the host once.
        kv: roll back attention keys and values (the slot mask and lengths follow).
        recurrent: roll back conv windows and recurrent states.
        num_layers: only the first ``num_layers`` layers (the early-exit draft).

    Raises:
        RollbackError: no recorded state of a layer reaches the requested position.
    """
    removal = _Removal(remove)
    rollback_cache(state.cache, removal, kv=kv, recurrent=recurrent, num_layers=num_layers)
    if not kv:
        return
    # Slot bookkeeping is shared by all layers, so it follows the attention layers only.
    common = removal.minimum
    if common > 0:
        state.attention_mask = state.attention_mask[:, : state.num_slots - common]
    if removal.uniform:
        state.lengths = state.lengths - common
    else:
        counts = removal.tensor(state.lengths.device)
        extra = counts - common
        slots = torch.arange(state.num_slots, device=extra.device)
        holes = slots[None, :] >= (state.num_slots - extra)[:, None]
        state.attention_mask = state.attention_mask.masked_fill(holes, 0)
        state.lengths = state.lengths - counts
    removed = removal.per_row(len(state.host_lengths))
    state.host_lengths = [n - r for n, r in zip(state.host_lengths, removed)]


def compact(state: DecodeState, slack: int) -> bool:
    """Drop padding and hole slots when they exceed ``slack``; return whether it did.

    The decision reads host-side lengths only, so a round that does not compact costs no
    device sync. Cost of a compaction: one gather over every attention layer's keys and
    values, O(B * S * layers), so with ``slack`` about a few rounds of tokens it runs every
    few rounds and the cache never exceeds ``max(lengths) + slack`` slots.
    """
    # Every valid slot contains one of the row's tokens, so the longest row sets the width.
    target = max(state.host_lengths)
    if state.num_slots - target <= slack:
        return False
    # Order each row's slots so that the valid ones come last, in their original order;
    # the result is a left-padded cache of ``target`` slots.
    slots = torch.arange(state.num_slots, device=state.attention_mask.device)
    key = state.attention_mask.to(torch.long) * (state.num_slots + 1) + slots[None, :]
    order = torch.argsort(key, dim=1)[:, -target:]  # [B, target]
    for layer in state.cache.layers:
        if _is_kv(layer):
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = torch.gather(layer.keys, 2, index)
            layer.values = torch.gather(layer.values, 2, index)
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            layer.cumulative_length_linear.fill_(target)
    state.attention_mask = torch.gather(state.attention_mask, 1, order)
    return True
