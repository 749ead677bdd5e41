"""Tiny randomly initialised models of the three supported transformers classes."""

import os

import pytest
import torch
from transformers import (
    FalconH1Config,
    FalconH1ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3_5ForCausalLM,
    Qwen3_5TextConfig,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models run fastest on one thread, and a shared machine is not oversubscribed.
torch.set_num_threads(1)

VOCAB = 64
FAMILIES = ("falcon_h1", "qwen3_5", "qwen2")


def tiny_config(family: str):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        initializer_range=0.2,
    )
    if family == "falcon_h1":
        return FalconH1Config(
            num_hidden_layers=3,
            mamba_d_ssm=32,
            mamba_n_heads=4,
            mamba_d_head=8,
            mamba_d_state=8,
            mamba_n_groups=1,
            mamba_chunk_size=8,
            mamba_d_conv=4,
            **common,
        )
    if family == "qwen3_5":
        return Qwen3_5TextConfig(
            num_hidden_layers=4,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            linear_conv_kernel_dim=4,
            **common,
        )
    if family == "qwen2":
        return Qwen2Config(num_hidden_layers=3, **common)
    raise ValueError(family)


_CLASSES = {"falcon_h1": FalconH1ForCausalLM, "qwen3_5": Qwen3_5ForCausalLM, "qwen2": Qwen2ForCausalLM}


def make_model(family: str, seed: int = 0, logit_scale: float = 1.0):
    """Build a tiny random model; ``logit_scale`` sharpens its distributions."""
    torch.manual_seed(seed)
    model = _CLASSES[family](tiny_config(family)).eval()
    if logit_scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(logit_scale)
    return model


_CACHE = {}


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def tiny_model(family):
    key = family
    if key not in _CACHE:
        _CACHE[key] = make_model(family)
    return _CACHE[key]


@pytest.fixture
def prompt():
    torch.manual_seed(1)
    return torch.randint(2, VOCAB, (1, 7))
