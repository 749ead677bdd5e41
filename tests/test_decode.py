"""Speculative decoding against the model's own generate(): token for token under greedy."""

import pytest
import torch
from conftest import VOCAB, make_model

from hybridspec_lite import make_draft, plain_generate, speculative_generate
from hybridspec_lite.drafts import Draft

KS = (1, 2, 3, 4, 8)
NEW_TOKENS = 20


def reference(model, prompt, max_new_tokens=NEW_TOKENS, eos_token_id=None):
    out = model.generate(
        prompt,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos_token_id,
        pad_token_id=0,
    )
    return out[0, prompt.shape[1] :].tolist()


def draft_variants(family):
    variants = [("early-exit", dict(exit_layer=1)), ("early-exit", dict(exit_layer=2))]
    if family != "qwen2":
        variants += [("component", dict(state="shared")), ("component", dict(state="own"))]
    return variants


class ConstantDraft(Draft):
    """Always proposes one fixed token: wrong whenever the target never emits it."""

    name = "constant"

    def __init__(self, token):
        self.token = token

    def propose(self, adapter, state, last_cached, pending, k, sampler):
        return torch.full((pending.shape[0], k), self.token, dtype=torch.long), None


@pytest.mark.parametrize("k", KS)
def test_greedy_equals_generate(tiny_model, family, prompt, k):
    expected = reference(tiny_model, prompt)
    for kind, options in draft_variants(family):
        out = speculative_generate(tiny_model, prompt, make_draft(kind, **options), k=k, max_new_tokens=NEW_TOKENS)
        assert out.tokens[0] == expected, f"{kind} {options} k={k}"
        assert 0.0 <= out.total.alpha <= 1.0


@pytest.mark.parametrize("k", KS)
def test_self_draft_accepts_everything(tiny_model, prompt, k):
    expected = reference(tiny_model, prompt)
    out = speculative_generate(tiny_model, prompt, make_draft("self"), k=k, max_new_tokens=NEW_TOKENS)
    assert out.tokens[0] == expected
    assert out.total.alpha == 1.0


@pytest.mark.parametrize("k", (1, 4))
def test_always_wrong_draft(tiny_model, prompt, k):
    expected = reference(tiny_model, prompt)
    never_emitted = next(t for t in range(VOCAB) if t not in expected)
    out = speculative_generate(tiny_model, prompt, ConstantDraft(never_emitted), k=k, max_new_tokens=NEW_TOKENS)
    assert out.tokens[0] == expected
    assert out.total.alpha == 0.0
    assert out.total.tau == 1.0


def test_plain_generate_equals_generate(tiny_model, prompt):
    assert plain_generate(tiny_model, prompt, max_new_tokens=NEW_TOKENS).tokens[0] == reference(tiny_model, prompt)


def test_single_token_prompt(tiny_model, family):
    prompt = torch.tensor([[5]])
    expected = reference(tiny_model, prompt, max_new_tokens=10)
    for kind, options in draft_variants(family):
        out = speculative_generate(tiny_model, prompt, make_draft(kind, **options), k=3, max_new_tokens=10)
        assert out.tokens[0] == expected, f"{kind} {options}"


def test_eos_inside_accepted_block(tiny_model, prompt):
    expected = reference(tiny_model, prompt)
    eos = expected[5]
    cut = expected.index(eos) + 1
    out = speculative_generate(
        tiny_model, prompt, make_draft("self"), k=8, max_new_tokens=NEW_TOKENS, eos_token_id=[VOCAB + 5, eos]
    )
    assert out.tokens[0] == expected[:cut]
    assert out.finished_by_eos == [True]
    assert out.tokens[0] == reference(tiny_model, prompt, eos_token_id=eos)


@pytest.mark.parametrize("max_new_tokens", (1, 2, 7, 11))
def test_exact_token_budget(tiny_model, prompt, max_new_tokens):
    out = speculative_generate(tiny_model, prompt, make_draft("self"), k=3, max_new_tokens=max_new_tokens)
    assert len(out.tokens[0]) == max_new_tokens
    assert out.tokens[0] == reference(tiny_model, prompt, max_new_tokens=max_new_tokens)


def test_round_counts_are_consistent(tiny_model, family, prompt):
    for kind, options in draft_variants(family):
        out = speculative_generate(tiny_model, prompt, make_draft(kind, **options), k=4, max_new_tokens=17)
        row = out.rows[0]
        assert 0 <= row.accepted <= row.drafted <= 4 * row.rounds
        # The prefill emits the first token; every other token comes from a round.
        assert row.emitted + 1 == len(out.tokens[0]) == row.new_tokens
        assert sum(row.position_accepted) == row.accepted
        assert all(a <= d for a, d in zip(row.position_accepted, row.position_drafted))


def test_nothing_drafted_has_no_rates(tiny_model, prompt):
    out = speculative_generate(tiny_model, prompt, make_draft("self"), k=2, max_new_tokens=1)
    assert out.total.drafted == 0
    assert out.total.alpha is None
    assert out.total.tau is None
    assert out.total.acceptance_by_position == [None, None] or out.total.acceptance_by_position == []


def test_component_draft_on_transformer_raises():
    model = make_model("qwen2")
    with pytest.raises(ValueError, match="early-exit"):
        speculative_generate(model, torch.tensor([[3, 4]]), make_draft("component"), k=2, max_new_tokens=4)


@pytest.mark.parametrize("exit_layer", (0, 4))
def test_exit_layer_out_of_range(exit_layer):
    model = make_model("qwen2")
    with pytest.raises(ValueError, match="exit layer"):
        speculative_generate(model, torch.tensor([[3, 4]]), make_draft("early-exit", exit_layer=exit_layer), k=2)


def test_bad_inputs_are_named():
    model = make_model("qwen2")
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        speculative_generate(model, torch.tensor([[3, 4]]), make_draft("self"), k=0)
    with pytest.raises(ValueError, match="empty"):
        speculative_generate(model, torch.zeros((1, 0), dtype=torch.long), make_draft("self"))
    with pytest.raises(ValueError, match="empty"):
        speculative_generate(model, [[3, 4], []], make_draft("self"))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        speculative_generate(model, torch.ones((1, 250), dtype=torch.long), make_draft("self"), max_new_tokens=10)
    with pytest.raises(ValueError, match="unknown draft"):
        make_draft("medusa")
    with pytest.raises(ValueError, match="exit layer"):
        make_draft("early-exit")


def test_unsupported_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel

    from hybridspec_lite import get_adapter

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(ValueError, match="FalconH1ForCausalLM"):
        get_adapter(model)
