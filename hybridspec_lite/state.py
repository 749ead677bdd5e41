"""Decoding state and its exact per-row rollback.

One ``DecodeState`` holds everything the target model has seen for a batch of rows: a
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

from dataclasses import dataclass

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

    @property
    def num_slots(self) -> int:
        return self.attention_mask.shape[1]

    def extended_mask(self, new_tokens: int) -> torch.Tensor:
        """Return the slot mask with ``new_tokens`` valid slots appended: [B, S + new_tokens]."""
        ones = self.attention_mask.new_ones(self.attention_mask.shape[0], new_tokens)
        return torch.cat([self.attention_mask, ones], dim=1)

    def position_ids(self, new_tokens: int) -> torch.Tensor:
        """Return position ids for ``new_tokens`` appended tokens: [B, new_tokens]."""
        offsets = torch.arange(new_tokens, device=self.lengths.device)
        return self.lengths[:, None] + offsets[None, :]

    def advance(self, new_tokens: int) -> None:
        """Record that ``new_tokens`` valid slots were appended to every row."""
        self.attention_mask = self.extended_mask(new_tokens)
        self.lengths = self.lengths + new_tokens


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


def _rollback_recurrent(layer, remove: torch.Tensor, common: int) -> None:
    """Return one recurrent layer to ``remove[b]`` tokens before its latest state, per row."""
    if not layer.record_past:
        raise RollbackError(
            f"{type(layer).__name__} does not record past states, so it cannot roll back; "
            "call start_recording() after the prefill"
        )
    max_remove = int(remove.max())
    rows = torch.arange(remove.shape[0], device=remove.device)
    for i in range(layer.number_of_states):
        if layer.is_recurrent_states_initialized[i]:
            history = layer.recurrent_states_history[i]
            if max_remove > len(history):
                raise RollbackError(
                    f"cannot remove {max_remove} tokens: only {len(history)} past recurrent "
                    "states were recorded since the last rollback"
                )
            if max_remove > 0:
                # stacked[j] is the state after the j-th recorded token; the last is current.
                stacked = torch.stack(history[len(history) - max_remove :] + [layer.recurrent_states[i]])
                chosen = stacked[max_remove - remove.to(stacked.device), rows]
                layer.recurrent_states[i] = chosen.contiguous()
            layer.recurrent_states_history[i] = []
        if layer.is_conv_states_initialized[i]:
            # With recording on, the conv state is the kernel window followed by every token
            # fed since the last rollback: [B, C, K + n].
            conv = layer.conv_states[i]
            kernel = layer.conv_kernel_size[i]
            ends = conv.shape[-1] - remove.to(conv.device)
            if int(ends.min()) < kernel:
                raise RollbackError(
                    f"cannot remove {int(remove.max())} tokens from a conv window of "
                    f"{conv.shape[-1]} columns with kernel {kernel}"
                )
            index = ends[:, None] - kernel + torch.arange(kernel, device=conv.device)[None, :]
            index = index[:, None, :].expand(-1, conv.shape[1], -1)
            layer.conv_states[i] = torch.gather(conv, 2, index)
    layer.cumulative_length_linear.sub_(common)


def rollback(
    state: DecodeState,
    remove: torch.Tensor,
    *,
    kv: bool = True,
    recurrent: bool = True,
    num_layers: int | None = None,
) -> None:
    """Remove the last ``remove[b]`` fed tokens of each row b from the cache.

    Args:
        state: the state whose cache is rolled back in place.
        remove: [B] tokens to remove per row; 0 keeps a row as it is.
        kv: roll back attention keys and values (the slot mask and lengths follow).
        recurrent: roll back conv windows and recurrent states.
        num_layers: only the first ``num_layers`` layers (the early-exit draft).

    Raises:
        RollbackError: a layer holds no record that reaches the requested position.
    """
    remove = remove.to(torch.long)
    if int(remove.min()) < 0:
        raise ValueError(f"tokens to remove must be >= 0, got {remove.tolist()}")
    common = int(remove.min())
    layers = state.cache.layers[: num_layers if num_layers is not None else len(state.cache.layers)]
    for layer in layers:
        if recurrent and _is_recurrent(layer):
            _rollback_recurrent(layer, remove, common)
        if kv and _is_kv(layer) and common > 0:
            DynamicLayer.crop(layer, -common)
    if not kv:
        return
    # Slot bookkeeping is shared by all layers, so it follows the attention layers only.
    if common > 0:
        state.attention_mask = state.attention_mask[:, : state.num_slots - common]
    extra = remove - common
    if int(extra.max()) > 0:
        slots = torch.arange(state.num_slots, device=extra.device)
        holes = slots[None, :] >= (state.num_slots - extra)[:, None]
        state.attention_mask = state.attention_mask.masked_fill(holes, 0)
    state.lengths = state.lengths - remove


def compact(state: DecodeState, slack: int) -> bool:
    """Drop padding and hole slots when they exceed ``slack``; return whether it did.

    Cost: one gather over every attention layer's keys and values, O(B * S * layers), so
    with ``slack`` about a few rounds of tokens it runs every few rounds and the cache never
    exceeds ``max(lengths) + slack`` slots.
    """
    valid = state.attention_mask.sum(dim=1)
    target = int(valid.max())
    if state.num_slots - target <= slack:
        return False
    # Order each row's slots so that the valid ones come last, in their original order;
    # the result is a left-padded cache of ``target`` slots.
    slots = torch.arange(state.num_slots, device=valid.device)
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
