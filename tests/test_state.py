"""Cache rollback against an independent oracle: a fresh prefill of the accepted prefix."""

import pytest
import torch
from conftest import make_model
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, LinearAttentionCacheLayerMixin

from hybridspec_lite import make_draft, speculative_generate
from hybridspec_lite.decode import prefill
from hybridspec_lite.state import RollbackError, rollback


def layer_tensors(cache, lengths=None):
    """Return {name: tensor} of every state in ``cache``, keys and values over valid slots."""
    found = {}
    for i, layer in enumerate(cache.layers):
        if isinstance(layer, DynamicLayer) and layer.is_initialized:
            found[f"{i}.keys"] = layer.keys
            found[f"{i}.values"] = layer.values
        if isinstance(layer, LinearAttentionCacheLayerMixin) and layer.is_conv_states_initialized[0]:
            found[f"{i}.conv"] = layer.conv_states[0]
            found[f"{i}.recurrent"] = layer.recurrent_states[0]
    return found


def fresh_states(model, ids):
    state, _ = prefill(model, ids, torch.ones_like(ids))
    return layer_tensors(state.cache)


def assert_states_equal(actual, expected, where):
    assert actual.keys() == expected.keys(), where
    for name in expected:
        assert actual[name].shape == expected[name].shape, f"{where} {name}"
        diff = (actual[name] - expected[name]).abs().max().item()
        print(f"{where} {name}: max abs diff {diff:.2e}")
        assert torch.allclose(actual[name], expected[name], atol=1e-4, rtol=1e-3), f"{where} {name}"


@pytest.mark.parametrize("k", (1, 3))
def test_states_match_fresh_prefill(tiny_model, family, prompt, k):
    variants = [("early-exit", dict(exit_layer=1)), ("self", {})]
    if family != "qwen2":
        variants += [("component", dict(state="shared")), ("component", dict(state="own"))]
    for kind, options in variants:
        checked = []

        def check(state, tokens):
            accepted_prefix = torch.cat([prompt, torch.tensor([tokens[0][:-1]], dtype=torch.long)], dim=1)
            assert int(state.lengths[0]) == accepted_prefix.shape[1]
            # The recording keeps no history between rounds, so only live states compare.
            assert_states_equal(layer_tensors(state.cache), fresh_states(tiny_model, accepted_prefix), f"{kind} round {len(checked)}")
            checked.append(len(tokens[0]))

        speculative_generate(tiny_model, prompt, make_draft(kind, **options), k=k, max_new_tokens=12, on_round=check)
        assert len(checked) >= 2


def test_prefill_matches_single_steps(tiny_model, prompt):
    n = prompt.shape[1]
    with torch.no_grad():
        parallel = tiny_model(prompt).logits[0]
        cache = DynamicCache(config=tiny_model.config)
        steps = [
            tiny_model(prompt[:, i : i + 1], cache=cache, use_cache=True, position_ids=torch.tensor([[i]])).logits[0, 0]
            for i in range(n)
        ]
    diff = (parallel - torch.stack(steps)).abs().max().item()
    print(f"prefill vs {n} single steps: max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_rollback_zero_and_all(tiny_model, prompt):
    """Removing nothing keeps the state; removing the whole block restores the old state."""
    state, _ = prefill(tiny_model, prompt, torch.ones_like(prompt))
    before = {name: t.clone() for name, t in layer_tensors(state.cache).items()}
    state.cache.activate_past_recording(recurrent_states_to_keep=4)
    block = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        tiny_model(block, cache=state.cache, use_cache=True, position_ids=state.position_ids(4), attention_mask=state.extended_mask(4))
    state.advance(4)
    after = {name: t.clone() for name, t in layer_tensors(state.cache).items()}
    rollback(state, torch.tensor([0]))
    # Conv windows are trimmed back to the kernel size, so compare their last columns.
    for name, t in layer_tensors(state.cache).items():
        assert torch.equal(t, after[name][..., -t.shape[-1] :] if name.endswith("conv") else after[name]), name
    with torch.no_grad():
        tiny_model(block, cache=state.cache, use_cache=True, position_ids=state.position_ids(4), attention_mask=state.extended_mask(4))
    state.advance(4)
    rollback(state, torch.tensor([4]))
    assert int(state.lengths[0]) == prompt.shape[1] + 4
    rollback_target = fresh_states(tiny_model, torch.cat([prompt, block], dim=1))
    assert_states_equal(layer_tensors(state.cache), rollback_target, "remove all")
    assert before.keys() == rollback_target.keys()


def test_rollback_beyond_record_raises():
    model = make_model("falcon_h1")
    ids = torch.tensor([[3, 4, 5]])
    state, _ = prefill(model, ids, torch.ones_like(ids))
    state.cache.activate_past_recording(recurrent_states_to_keep=2)
    with torch.no_grad():
        model(torch.tensor([[6, 7]]), cache=state.cache, use_cache=True, position_ids=state.position_ids(2))
    state.advance(2)
    with pytest.raises(RollbackError, match="cannot remove 3 tokens"):
        rollback(state, torch.tensor([3]))


def test_rollback_without_recording_raises():
    model = make_model("qwen3_5")
    ids = torch.tensor([[3, 4, 5]])
    state, _ = prefill(model, ids, torch.ones_like(ids))
    with pytest.raises(RollbackError, match="does not record past states"):
        rollback(state, torch.tensor([1]))
