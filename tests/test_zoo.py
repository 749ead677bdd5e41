import json
import math

import huggingface_hub.constants
import pytest
import torch
from transformers import FalconH1Config, Qwen2Config, Qwen3_5TextConfig

from hybridspec_lite import data, zoo

SIZE_LIMIT_BYTES = 25 * 1024 * 1024
PROMPT = "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:"


def _set_hub_offline(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once at import, so patch the constant as well.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny_models():
    with pytest.MonkeyPatch.context() as monkeypatch:
        _set_hub_offline(monkeypatch)
        return {name: zoo.load(name) for name in zoo.TINY_NAMES}


def test_registry_profiles():
    tiny = zoo.list_models("tiny")
    paper = zoo.list_models("paper")
    assert [entry.name for entry in tiny] == list(zoo.TINY_NAMES)
    assert len(tiny) == 6
    assert len(paper) == 9
    assert zoo.list_models() == tiny + paper
    assert all(entry.path is not None and entry.hub_id is None for entry in tiny)
    assert all(entry.hub_id is not None and entry.path is None for entry in paper)


def test_registry_compositions():
    expected = {"falcon-h1": "parallel", "qwen3.5": "sequential", "qwen2": "transformer", "qwen2.5": "transformer"}
    for entry in zoo.list_models():
        assert entry.composition == expected[entry.family]
    names = {entry.name: entry for entry in zoo.list_models("paper")}
    assert names["paper/falcon-h1-1.5b"].hub_id == "tiiuae/Falcon-H1-1.5B-Base"
    assert names["paper/qwen3.5-0.8b"].hub_id == "Qwen/Qwen3.5-0.8B"
    assert names["paper/qwen2.5-3b"].hub_id == "Qwen/Qwen2.5-3B"


def test_list_models_invalid_profile():
    with pytest.raises(ValueError, match="profile"):
        zoo.list_models("big")


def test_tokenizer_special_tokens():
    tokenizer = zoo.load_tokenizer()
    assert len(tokenizer) == zoo.TOKENIZER_VOCAB_SIZE
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == 0
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    ids = tokenizer(PROMPT)["input_ids"]
    assert 0 not in ids
    assert tokenizer.decode(ids) == PROMPT


@pytest.mark.parametrize("name", zoo.TINY_NAMES)
def test_tiny_model_logits_finite(tiny_models, name):
    model, tokenizer = tiny_models[name]
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    input_ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    assert logits.shape == (1, input_ids.shape[1], zoo.TOKENIZER_VOCAB_SIZE)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", zoo.TINY_NAMES)
def test_tiny_model_greedy_generation(tiny_models, name):
    model, tokenizer = tiny_models[name]
    input_ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    prompt_length = input_ids.shape[1]
    with torch.no_grad():
        output = model.generate(input_ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        # Greedy decoding with the cache must pick the argmax of a full forward pass.
        logits = model(input_ids=output).logits
    assert output.shape[1] == prompt_length + 6
    expected = logits[0, prompt_length - 1 : -1].argmax(dim=-1)
    assert torch.equal(output[0, prompt_length:], expected)
    assert tokenizer.decode(output[0, prompt_length:]).strip()


@pytest.mark.parametrize("name", zoo.TINY_NAMES)
def test_tiny_model_card_fields(name):
    card = zoo.model_card(name)
    entry = next(entry for entry in zoo.list_models("tiny") if entry.name == name)
    assert card["name"] == name
    assert card["family"] == entry.family
    assert card["composition"] == entry.composition
    assert card["config"]["hidden_size"] > 0
    assert card["parameters"] > 0
    assert card["storage_dtype"] == "float16"
    assert card["training"]["tokens_seen"] > 0
    assert card["training"]["training_seconds"] > 0
    assert card["training"]["seed"] >= 0
    assert 0 < card["training"]["final_loss"] < card["training"]["first_loss"]
    assert card["heldout"]["perplexity"] > 1
    assert math.isclose(card["heldout"]["perplexity"], math.exp(card["heldout"]["loss"]), rel_tol=1e-9)
    assert "GSM8K test" in card["heldout"]["text"]
    assert card["machine"]["cpu_model"]
    assert card["machine"]["torch_threads"] > 0
    assert card["versions"]["torch"]
    assert card["versions"]["transformers"]
    assert (entry.path / "README.md").is_file()


@pytest.mark.parametrize("name", zoo.TINY_NAMES)
def test_card_parameters_match_model(tiny_models, name):
    model, _ = tiny_models[name]
    assert zoo.model_card(name)["parameters"] == model.num_parameters()


def test_card_matches_build_config(tiny_models):
    for name in zoo.TINY_NAMES:
        model, _ = tiny_models[name]
        assert zoo.summarize_config(model.config) == zoo.summarize_config(zoo.build_config(name))
        assert zoo.model_card(name)["config"] == zoo.summarize_config(zoo.build_config(name))


def test_qwen35_layer_pattern():
    for size in ("s", "l"):
        layer_types = zoo.build_config(f"tiny/qwen3.5-{size}").layer_types
        assert len(layer_types) % 4 == 0
        assert layer_types == (["linear_attention"] * 3 + ["full_attention"]) * (len(layer_types) // 4)


def test_same_size_models_matched():
    cards = {name: zoo.model_card(name) for name in zoo.TINY_NAMES}
    for size in ("s", "l"):
        same_size = [card for card in cards.values() if card["size"] == size]
        counts = [card["parameters"] for card in same_size]
        assert max(counts) / min(counts) < 1.10
        assert len({card["training"]["tokens_seen"] for card in same_size}) == 1
        assert len({card["tokenizer"]["sha256"] for card in same_size}) == 1
    small = cards["tiny/qwen2-s"]["parameters"]
    large = cards["tiny/qwen2-l"]["parameters"]
    assert 3 < large / small < 5


def test_zoo_size_under_limit():
    files = [path for path in zoo.RESOURCES_DIR.rglob("*") if path.is_file() and "data" not in path.parts]
    assert sum(path.stat().st_size for path in files) < SIZE_LIMIT_BYTES


def test_load_by_directory_and_short_name(monkeypatch):
    _set_hub_offline(monkeypatch)
    entry = next(entry for entry in zoo.list_models("tiny") if entry.name == "tiny/qwen2-s")
    model, tokenizer = zoo.load(entry.path)
    assert tokenizer.eos_token_id == 0
    assert model.num_parameters() == zoo.model_card("tiny/qwen2-s")["parameters"]
    assert zoo.model_card("qwen2-s")["name"] == "tiny/qwen2-s"
    assert zoo.model_card(entry.path)["name"] == "tiny/qwen2-s"


def test_paper_checkpoint_missing_offline(monkeypatch, tmp_path):
    _set_hub_offline(monkeypatch)
    with pytest.raises(zoo.CheckpointNotAvailableError) as error:
        zoo.load("paper/qwen2.5-0.5b", cache_dir=tmp_path)
    message = str(error.value)
    assert "Qwen/Qwen2.5-0.5B" in message
    assert "hf download Qwen/Qwen2.5-0.5B" in message
    assert "'tiny' profile" in message


def test_plain_hub_id_missing_offline(monkeypatch, tmp_path):
    _set_hub_offline(monkeypatch)
    with pytest.raises(zoo.CheckpointNotAvailableError, match="tiiuae/Falcon-H1-0.5B-Base"):
        zoo.load("tiiuae/Falcon-H1-0.5B-Base", cache_dir=tmp_path)


@pytest.mark.parametrize("name", ["tiny/qwen2-xl", "paper/qwen9-1b"])
def test_unknown_registry_name_rejected(name):
    with pytest.raises(ValueError, match="Valid names") as error:
        zoo.load(name)
    profile = name.split("/")[0]
    for entry in zoo.list_models(profile):
        assert entry.name in str(error.value)


def test_unknown_name_rejected_elsewhere():
    with pytest.raises(ValueError, match="tiny/qwen2-s"):
        zoo.model_card("tiny/qwen2-xl")
    with pytest.raises(ValueError, match="not a tiny zoo model"):
        zoo.build_config("paper/qwen2.5-0.5b")
    with pytest.raises(ValueError, match="Unknown tiny model 'qwen2-xl'"):
        zoo.model_card("qwen2-xl")
    with pytest.raises(ValueError, match="huggingface.co/Qwen/Qwen2.5-0.5B"):
        zoo.model_card("paper/qwen2.5-0.5b")


def _very_small_config(family):
    common = dict(
        vocab_size=zoo.TOKENIZER_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        eos_token_id=0,
        pad_token_id=0,
    )
    if family == "falcon-h1":
        return FalconH1Config(
            **common, num_hidden_layers=1, mamba_d_ssm=32, mamba_n_heads=2, mamba_d_state=8, mamba_chunk_size=16
        )
    if family == "qwen3.5":
        return Qwen3_5TextConfig(
            **common,
            num_hidden_layers=4,
            head_dim=16,
            linear_num_key_heads=1,
            linear_num_value_heads=2,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
        )
    return Qwen2Config(**common, num_hidden_layers=1)


@pytest.fixture(scope="module")
def smoke_documents():
    tokenizer = zoo.load_tokenizer()
    return zoo._encode_documents(tokenizer, data.gsm8k_documents("train")[:300])


@pytest.mark.parametrize("family", ["falcon-h1", "qwen3.5", "qwen2"])
def test_training_smoke_loss_decreases(family, smoke_documents):
    torch.set_num_threads(1)
    settings = zoo.TrainSettings(steps=20, batch_size=4, seq_len=64, learning_rate=1e-2, warmup_steps=2)
    model, stats = zoo.train_model(_very_small_config(family), settings, smoke_documents)
    losses = stats["losses"]
    assert len(losses) == 20
    assert stats["tokens_seen"] == 20 * 4 * 64
    assert losses[-1] < losses[0]
    assert not model.training


@pytest.mark.parametrize("family", ["falcon-h1", "qwen3.5", "qwen2"])
def test_training_deterministic(family, smoke_documents):
    torch.set_num_threads(1)
    settings = zoo.TrainSettings(steps=5, batch_size=2, seq_len=32, learning_rate=1e-2, warmup_steps=1)
    _, first = zoo.train_model(_very_small_config(family), settings, smoke_documents)
    _, second = zoo.train_model(_very_small_config(family), settings, smoke_documents)
    assert first["losses"] == second["losses"]


def test_train_zoo_model_rejects_invalid_settings(tmp_path):
    with pytest.raises(ValueError, match="step count"):
        zoo.train_zoo_model("tiny/qwen2-s", out_dir=tmp_path, steps=0)
    with pytest.raises(ValueError, match="learning rate"):
        zoo.train_zoo_model("tiny/qwen2-s", out_dir=tmp_path, learning_rate=-1.0)
    with pytest.raises(ValueError, match="not a tiny zoo model"):
        zoo.train_zoo_model("paper/qwen2.5-0.5b", out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_learning_rate_schedule():
    settings = zoo.TrainSettings(steps=100, warmup_steps=10, min_learning_rate_ratio=0.1)
    factors = [zoo._learning_rate_factor(step, settings) for step in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(later <= earlier for earlier, later in zip(factors[9:], factors[10:]))


def test_checkpoint_write_failure_keeps_previous(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "card.json").write_text(json.dumps({"version": 1}))

    def failing_write(directory):
        (directory / "card.json").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        zoo._write_checkpoint_atomically(target, failing_write)
    assert json.loads((target / "card.json").read_text()) == {"version": 1}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]

    zoo._write_checkpoint_atomically(target, lambda directory: (directory / "card.json").write_text("{}"))
    assert (target / "card.json").read_text() == "{}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]


def test_missing_local_directory_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        zoo.load(str(missing))
