"""Measurement units of the notebooks, on tiny random models and a character tokenizer."""

import numpy as np
import pytest
from conftest import VOCAB, make_model

from hybridspec_lite import experiments


class CharTokenizer:
    """Maps each character to an id in [2, VOCAB); id 1 is EOS and id 0 is padding."""

    eos_token_id = 1
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + ord(c) % (VOCAB - 2) for c in text[:24]]}


@pytest.fixture
def tiny_zoo(monkeypatch):
    """Make ``experiments.load_model("random/<family>")`` return a tiny random model."""
    models = {}

    def load_model(name, dtype="float32", device="cpu"):
        family = name.split("/", 1)[1]
        if family not in models:
            models[family] = make_model(family)
        return models[family], CharTokenizer()

    monkeypatch.setattr(experiments, "load_model", load_model)
    experiments._wikitext_tokens.cache_clear()
    yield
    experiments._wikitext_tokens.cache_clear()


RUN = dict(n_prompts=3, max_new_tokens=10, n_boot=200)


def test_acceptance_run_counts(tiny_zoo):
    result = experiments.acceptance_run("random/falcon_h1", draft="component", k=3, **RUN)
    prompts = result["per_prompt"]
    assert len(prompts) == 3
    assert result["accepted"] == sum(p["accepted"] for p in prompts)
    assert result["drafted"] == sum(p["drafted"] for p in prompts)
    assert result["rounds"] == sum(p["rounds"] for p in prompts)
    assert result["alpha"] == pytest.approx(result["accepted"] / result["drafted"])
    assert result["tau"] == pytest.approx(result["emitted"] / result["rounds"])
    assert len(result["acceptance_by_position"]) == 3
    assert all(p["new_tokens"] == len(p["tokens"]) for p in prompts)


def test_acceptance_run_records_settings(tiny_zoo):
    result = experiments.acceptance_run("random/qwen3_5", draft="component", state="own", k=2, **RUN)
    assert result["k"] == 2
    assert result["state"] == "own"
    assert result["decoding"] == "greedy"
    assert result["batch_size"] == 1
    assert result["n_prompts"] == 3
    assert result["prompt_tokens"] == sum(p["prompt_tokens"] for p in result["per_prompt"])
    env = result["environment"]
    for key in ("cpu", "torch_threads", "dtype", "torch", "transformers"):
        assert env[key] is not None, key


def test_acceptance_interval_contains_alpha(tiny_zoo):
    result = experiments.acceptance_run("random/falcon_h1", draft="early-exit", exit_layer=1, k=2, **RUN)
    interval = result["alpha_interval"]
    assert interval["estimate"] == pytest.approx(result["alpha"])
    assert interval["low"] <= result["alpha"] <= interval["high"]


def test_acceptance_timing(tiny_zoo):
    result = experiments.acceptance_run("random/qwen2", draft="early-exit", exit_layer=2, k=2, **RUN)
    timing = result["timing"]
    assert timing["verify_forwards"] == result["rounds"]
    assert timing["draft_steps"] == result["drafted"]
    assert timing["draft_step_median_s"] > 0
    assert timing["cost_ratio"] == pytest.approx(timing["draft_step_median_s"] / timing["verify_median_s"])


def test_self_draft_accepts_all(tiny_zoo):
    result = experiments.acceptance_run("random/qwen3_5", draft="self", k=4, **RUN)
    assert result["alpha"] == 1.0
    assert result["alpha_interval"]["low"] == 1.0


def test_transformer_has_no_component_draft(tiny_zoo):
    with pytest.raises(ValueError, match="pure Transformer"):
        experiments.acceptance_run("random/qwen2", draft="component", k=2, **RUN)


def test_greedy_output_equals_baseline(tiny_zoo):
    settings = dict(n_prompts=3, max_new_tokens=10)
    baseline = experiments.baseline_run("random/falcon_h1", **settings)
    result = experiments.acceptance_run("random/falcon_h1", draft="component", k=3, n_boot=100, **settings)
    summary = experiments.cost_summary(result, baseline)
    assert summary["identical_prompts"] == 3
    assert summary["cost_ratio"] > 0
    assert summary["ideal_speedup"] > 0


def test_paired_baseline_in_run(tiny_zoo):
    result = experiments.acceptance_run("random/qwen3_5", draft="component", k=2, **RUN)
    assert result["identical_prompts"] == 3
    assert all(p["identical"] for p in result["per_prompt"])
    timing = result["timing"]
    assert timing["plain_step_median_s"] > 0
    assert timing["measured_speedup"] == pytest.approx(timing["plain_seconds_per_token"] / timing["seconds_per_token"])
    summary = experiments.cost_summary(result)
    assert summary["identical_prompts"] == 3
    assert summary["measured_speedup"] == pytest.approx(timing["measured_speedup"])


def test_cost_summary_needs_plain_decoding(tiny_zoo):
    result = experiments.acceptance_run("random/qwen2", draft="self", k=2, baseline=False, **RUN)
    assert result["identical_prompts"] is None
    with pytest.raises(ValueError, match="no paired plain decoding"):
        experiments.cost_summary(result)


def test_cost_summary_rejects_other_prompts(tiny_zoo):
    baseline = experiments.baseline_run("random/qwen2", n_prompts=2, max_new_tokens=5)
    result = experiments.acceptance_run("random/qwen2", draft="self", k=2, n_prompts=3, max_new_tokens=5, n_boot=50)
    with pytest.raises(ValueError, match="n_prompts"):
        experiments.cost_summary(result, baseline)


def test_sampling_run_repeats_with_seed(tiny_zoo):
    settings = dict(draft="component", k=2, temperature=0.7, seed=3, **RUN)
    first = experiments.acceptance_run("random/falcon_h1", **settings)
    second = experiments.acceptance_run("random/falcon_h1", **settings)
    assert first["decoding"].startswith("sampling (temperature 0.7")
    assert [p["tokens"] for p in first["per_prompt"]] == [p["tokens"] for p in second["per_prompt"]]
    assert first["accepted"] == second["accepted"]


def test_top_p_without_temperature_rejected():
    with pytest.raises(ValueError, match="give a temperature"):
        experiments.sampling_config(None, top_p=0.9)


# ---------------------------------------------------------------------------------------
# Bootstrap


def draws(n, seed):
    rng = np.random.default_rng(seed)
    drafted = rng.integers(20, 40, size=n)
    accepted = rng.binomial(drafted, 0.4)
    return accepted.tolist(), drafted.tolist()


def test_bootstrap_contains_point_estimate():
    accepted, drafted = draws(30, seed=0)
    interval = experiments.bootstrap_interval(accepted, drafted, n_boot=2000, seed=1)
    assert interval["estimate"] == pytest.approx(sum(accepted) / sum(drafted))
    assert interval["low"] < interval["estimate"] < interval["high"]
    assert interval["level"] == 0.95


def test_bootstrap_narrows_with_more_prompts():
    few = experiments.bootstrap_interval(*draws(10, seed=2), n_boot=2000, seed=0)
    many = experiments.bootstrap_interval(*draws(400, seed=2), n_boot=2000, seed=0)
    width_few = few["high"] - few["low"]
    width_many = many["high"] - many["low"]
    print(f"width with 10 prompts {width_few:.4f}, with 400 prompts {width_many:.4f}")
    assert width_many < width_few / 3


def test_bootstrap_is_seeded():
    accepted, drafted = draws(20, seed=4)
    assert experiments.bootstrap_interval(accepted, drafted, seed=7) == experiments.bootstrap_interval(accepted, drafted, seed=7)


def test_bootstrap_constant_rate_has_zero_width():
    interval = experiments.bootstrap_interval([5, 10, 15], [10, 20, 30], n_boot=500)
    assert interval["low"] == interval["high"] == 0.5


def test_bootstrap_nothing_drafted_rejected():
    with pytest.raises(ValueError, match="nothing was drafted"):
        experiments.bootstrap_interval([0, 0], [0, 0])


def test_bootstrap_invalid_level_rejected():
    with pytest.raises(ValueError, match="level"):
        experiments.bootstrap_interval([1], [2], level=95)


# ---------------------------------------------------------------------------------------
# Divergence and perplexity


def test_divergence_component_draft(tiny_zoo):
    result = experiments.divergence_run("random/falcon_h1", n_documents=3, max_tokens=16, n_boot=100)
    tv = result["total_variation"]["estimate"]
    assert 0.0 < tv < 1.0
    assert result["kl"]["estimate"] > 0.0
    assert 0.0 <= result["top1_agreement"]["estimate"] <= 1.0
    assert result["sampling_acceptance"]["estimate"] == pytest.approx(1 - tv)
    assert result["positions"] == 3 * 16


def test_divergence_of_full_depth_exit_is_zero(tiny_zoo):
    # Exiting after the last layer is the full model: the draft equals the target.
    result = experiments.divergence_run("random/qwen3_5", draft="early-exit", exit_layer=4, n_documents=2, max_tokens=12, n_boot=50)
    assert result["total_variation"]["estimate"] == pytest.approx(0.0, abs=1e-6)
    assert result["top1_agreement"]["estimate"] == 1.0


def test_perplexity_ratio_without_ablation_is_one(tiny_zoo):
    result = experiments.perplexity_run("random/qwen2", ablation="none", n_chunks=2, chunk_tokens=40, window=16, stride=8, n_boot=50)
    assert result["ratio"]["estimate"] == pytest.approx(1.0)
    assert result["scored_tokens"] == 2 * 39


def test_perplexity_attention_ablation(tiny_zoo):
    result = experiments.perplexity_run("random/falcon_h1", n_chunks=3, chunk_tokens=40, window=16, stride=8, n_boot=100)
    ratio = result["ratio"]
    assert ratio["estimate"] == pytest.approx(result["perplexity_ablated"] / result["perplexity_full"])
    assert ratio["low"] <= ratio["estimate"] <= ratio["high"]
    assert len(result["removed"]) == 3


def test_perplexity_early_exit_ablation(tiny_zoo):
    result = experiments.perplexity_run("random/qwen2", ablation="exit:1", n_chunks=2, chunk_tokens=30, window=16, stride=8, n_boot=50)
    assert result["ratio"]["estimate"] != pytest.approx(1.0)


# ---------------------------------------------------------------------------------------
# Profiles


def test_model_name_profiles():
    assert experiments.model_name("tiny", "qwen3.5", "l") == "tiny/qwen3.5-l"
    assert experiments.model_name("paper", "falcon-h1", "s") == "paper/falcon-h1-0.5b"
    assert experiments.model_name("paper", "qwen2", "s") == "paper/qwen2.5-0.5b"
    with pytest.raises(ValueError, match="unknown profile"):
        experiments.model_name("huge", "qwen2")


# ---------------------------------------------------------------------------------------
# Cached units


def test_measure_reuses_and_keys_checkpoint(tmp_path, monkeypatch):
    checkpoint = tmp_path / "model"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"weights v1")
    calls = []

    def fake_run(model_name, draft="component", k=2, state="shared", exit_layer=None):
        calls.append(k)
        return {"k": k}

    monkeypatch.setitem(experiments.MEASUREMENTS, "acceptance", fake_run)
    units = [dict(model_name=str(checkpoint), k=2)]
    root = tmp_path / "results"
    assert experiments.measure("acceptance", units, root=root, progress=False) == [{"k": 2}]
    experiments.measure("acceptance", units, root=root, progress=False)
    assert calls == [2]

    (checkpoint / "model.safetensors").write_bytes(b"retrained weights")
    experiments.measure("acceptance", units, root=root, progress=False)
    assert calls == [2, 2]


def test_unit_params_drop_ignored_settings():
    params = experiments.unit_params("acceptance", model_name="m", draft="early-exit", exit_layer=2, state="own")
    assert params["state"] is None
    assert params["exit_layer"] == 2
    component = experiments.unit_params("acceptance", model_name="m", draft="component", exit_layer=3)
    assert component["exit_layer"] is None
    assert component["n_prompts"] == 8
