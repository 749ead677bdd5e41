"""Sliding-window perplexity and component ablations on tiny random models."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB, make_model

from hybridspec_lite import SamplingConfig, get_adapter, speculative_generate
from hybridspec_lite.drafts import ComponentDraft
from hybridspec_lite.perplexity import (
    ablation_components,
    ablation_ratio,
    evaluate_ablation,
    evaluate_documents,
    evaluate_perplexity,
    layer_sweep,
    plan_windows,
    random_control,
)

HYBRIDS = ("falcon_h1", "qwen3_5")


def random_tokens(length, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (length,), generator=generator).tolist()


def nll_by_hand(model, tokens, score_from=1):
    """Summed NLL of tokens[score_from:] from one forward over ``tokens``."""
    with torch.inference_mode():
        logits = model(torch.tensor([tokens])).logits[0]
    targets = torch.tensor(tokens[score_from:])
    return F.cross_entropy(logits[score_from - 1 : -1].float(), targets, reduction="sum").item()


def test_perplexity_matches_single_forward(tiny_model):
    tokens = random_tokens(30)
    result = evaluate_perplexity(tiny_model, tokens, window=64, stride=32, progress=False)

    expected_mean = nll_by_hand(tiny_model, tokens) / 29
    assert result.scored_tokens == 29
    assert result.mean_nll == pytest.approx(expected_mean, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(expected_mean), rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(result.mean_nll), rel=1e-12)


def test_bos_prepended_not_scored(tiny_model):
    tokens = random_tokens(20)
    bos = 1
    result = evaluate_perplexity(
        tiny_model, tokens, window=64, stride=32, bos_token_id=bos, progress=False, return_positions=True
    )

    expected = nll_by_hand(tiny_model, [bos] + tokens) / 20
    assert result.scored_tokens == 20
    assert result.scored_positions == tuple(range(20))
    assert result.mean_nll == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("length,window,stride", [(30, 8, 3), (30, 8, 7), (9, 8, 1), (2, 2, 1), (100, 16, 5)])
def test_windows_score_each_position_once(length, window, stride):
    windows = plan_windows(length, window, stride)
    scored = [p for w in windows for p in range(w.score_from, w.end)]

    assert sorted(scored) == list(range(1, length))
    assert len(scored) == len(set(scored))
    for w in windows:
        assert w.begin < w.score_from <= w.end <= length
        assert w.end - w.begin <= window


def test_strided_scoring_covers_tokens_once(tiny_model):
    tokens = random_tokens(30)
    window, stride = 8, 3
    result = evaluate_perplexity(tiny_model, tokens, window=window, stride=stride, progress=False, return_positions=True)

    assert result.scored_tokens == len(tokens) - 1
    assert sorted(result.scored_positions) == list(range(1, len(tokens)))
    assert len(set(result.scored_positions)) == len(result.scored_positions)

    # Each window scores its new tokens with only the context inside the window.
    expected = sum(
        nll_by_hand(tiny_model, tokens[w.begin : w.end], score_from=w.score_from - w.begin)
        for w in plan_windows(len(tokens), window, stride)
    )
    assert result.total_nll == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_documents_match_single(tiny_model, padding_side):
    short, long = random_tokens(9, seed=4), random_tokens(40, seed=5)
    options = dict(window=16, stride=6, progress=False)
    alone = [evaluate_perplexity(tiny_model, doc, **options) for doc in (short, long)]
    batched = evaluate_documents(tiny_model, [short, long], batch_size=4, padding_side=padding_side, **options)

    for single, together in zip(alone, batched):
        print(f"{padding_side}: alone {single.perplexity:.8f}, batched {together.perplexity:.8f}")
        assert together.scored_tokens == single.scored_tokens
        assert together.perplexity == pytest.approx(single.perplexity, rel=1e-5)


def test_padding_token_value_does_not_matter(tiny_model):
    documents = [random_tokens(5, seed=6), random_tokens(23, seed=7)]
    options = dict(window=16, stride=6, batch_size=4, progress=False)
    with_zero = evaluate_documents(tiny_model, documents, pad_token_id=0, **options)
    with_other = evaluate_documents(tiny_model, documents, pad_token_id=VOCAB - 1, **options)

    for a, b in zip(with_zero, with_other):
        assert a.perplexity == pytest.approx(b.perplexity, rel=1e-5)


def test_documents_pool_token_weighted(tiny_model):
    documents = [random_tokens(12, seed=8), random_tokens(25, seed=9)]
    options = dict(window=16, stride=6, progress=False)
    each = evaluate_documents(tiny_model, documents, **options)
    pooled = evaluate_perplexity(tiny_model, documents, **options)

    assert pooled.scored_tokens == 11 + 24
    assert pooled.total_nll == pytest.approx(sum(r.total_nll for r in each), rel=1e-12)


def test_invalid_inputs_raise():
    model = make_model("qwen2")
    tokens = random_tokens(10)
    with pytest.raises(ValueError, match="stride"):
        evaluate_perplexity(model, tokens, window=8, stride=8, progress=False)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        evaluate_perplexity(model, tokens, window=100_000, stride=10, progress=False)
    with pytest.raises(ValueError, match="document 1 has 1 token"):
        evaluate_documents(model, [tokens, [5]], window=8, stride=4, progress=False)


def test_none_ablation_ratio_is_exactly_one(tiny_model):
    tokens = random_tokens(30)
    ratio = ablation_ratio(tiny_model, tokens, "none", window=16, stride=6, progress=False)

    assert ratio == 1.0


@pytest.mark.parametrize("family_name", HYBRIDS)
def test_attention_ablation_changes_perplexity(family_name):
    model = make_model(family_name)
    result = evaluate_ablation(model, random_tokens(30), "attention", window=16, stride=6, progress=False)

    assert len(result.components) == len(get_adapter(model).components("attention"))
    assert result.ablated.perplexity != result.full.perplexity
    assert result.ratio == result.ablated.perplexity / result.full.perplexity


class RecordingComponentDraft(ComponentDraft):
    """The own-state component draft, keeping every distribution q that it proposes."""

    def __init__(self):
        super().__init__(state="own")
        self.proposals = []

    def propose(self, adapter, state, last_cached, pending, k, sampler):
        drafted, probs = super().propose(adapter, state, last_cached, pending, k, sampler)
        self.proposals.append(probs.clone())
        return drafted, probs


@pytest.mark.parametrize("family_name", HYBRIDS)
def test_ablated_logits_equal_own_state_draft(family_name, prompt):
    model = make_model(family_name)
    adapter = get_adapter(model)
    draft = RecordingComponentDraft()
    emitted = []
    out = speculative_generate(
        model,
        prompt,
        draft,
        k=1,
        max_new_tokens=10,
        sampling=SamplingConfig(do_sample=True, temperature=1.0),
        generator=torch.Generator().manual_seed(0),
        on_round=lambda state, tokens: emitted.append(list(tokens[0])),
    )
    assert ablation_components(adapter, "attention") == adapter.components("attention")

    # Round r drafts after the prompt and every token emitted before it.
    prefixes = [out.tokens[0][:1]] + emitted
    assert len(draft.proposals) >= 2
    for round_index, q in enumerate(draft.proposals):
        prefix = prompt[0].tolist() + prefixes[round_index]
        with torch.inference_mode(), adapter.attention_free():
            logits = model(torch.tensor([prefix])).logits[0, -1]
        expected = torch.softmax(logits.float(), dim=-1)
        difference = (q[0, 0] - expected).abs().max().item()
        print(f"{family_name} round {round_index}: prefix {len(prefix)} tokens, max |q - p_ablated| = {difference:.3e}")
        assert difference < 1e-5


def test_layer_sweep_covers_every_layer(tiny_model):
    adapter = get_adapter(tiny_model)
    names = layer_sweep(adapter)

    assert names == [f"layer:{i}" for i in range(adapter.num_layers)]
    removed = []
    for layer, name in enumerate(names):
        components = ablation_components(adapter, name)
        assert components, name
        assert {c.layer for c in components} == {layer}
        removed += components
    assert removed == adapter.components()

    tokens = random_tokens(20)
    for name in names:
        ratio = ablation_ratio(tiny_model, tokens, name, adapter=adapter, window=16, stride=6, progress=False)
        assert math.isfinite(ratio)
        assert ratio > 0


@pytest.mark.parametrize("family_name", HYBRIDS)
def test_random_control_matches_attention_count(family_name):
    adapter = get_adapter(make_model(family_name))
    attention = adapter.components("attention")
    controls = [random_control(adapter, seed=seed) for seed in range(10)]

    for control in controls:
        assert len(control) == len(attention)
        assert len(set(control)) == len(control)
        assert set(control) <= set(adapter.components())
    assert len({frozenset(c) for c in controls}) > 1
    assert random_control(adapter, seed=3) == controls[3]
    assert ablation_components(adapter, "random:3") == controls[3]


def test_transformer_attention_ablation_raises():
    model = make_model("qwen2")
    with pytest.raises(ValueError, match="early-exit"):
        ablation_ratio(model, random_tokens(20), "attention", window=16, stride=6, progress=False)


def test_invalid_ablation_names_raise():
    adapter = get_adapter(make_model("falcon_h1"))
    with pytest.raises(ValueError, match="'linear_attention'"):
        ablation_components(adapter, "linear_attention")
    with pytest.raises(ValueError, match="layer 3"):
        ablation_components(adapter, "layer:3")
    with pytest.raises(ValueError, match="unknown ablation 'mlp'"):
        ablation_components(adapter, "mlp")
    assert ablation_components(adapter, "ssm") == adapter.components("ssm")
