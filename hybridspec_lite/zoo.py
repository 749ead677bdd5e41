"""Model zoo: a registry of hybrid and Transformer checkpoints, their loader and trainer.

Two profiles are registered:

* ``tiny`` (the default): six small models shipped in ``resources/zoo/``, one per family
  and size. All were trained here on the same GSM8K text, with the same tokenizer, token
  budget and (within about 1 percent) parameter count, so architecture is the only variable:

  - ``falcon-h1``: parallel hybrid, Mamba-2 and attention side by side in every layer.
  - ``qwen3.5``: sequential hybrid, three Gated DeltaNet layers then one attention layer.
  - ``qwen2``: Transformer control.

* ``paper``: the Hugging Face Hub checkpoints of the same three families at 0.5B to 4B
  parameters. They are not bundled, so loading one needs network access or a local copy.

Every model is a stock ``transformers`` class (``FalconH1ForCausalLM``,
``Qwen3_5ForCausalLM``, ``Qwen2ForCausalLM``). Rebuild the tiny zoo with::

    python -m hybridspec_lite.zoo tokenizer        # byte-level BPE on GSM8K train
    python -m hybridspec_lite.zoo train --all      # all six models, one after another
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import data
from .data import _hub_errors

__all__ = [
    "CheckpointNotAvailableError",
    "ModelEntry",
    "TrainSettings",
    "build_config",
    "list_models",
    "load",
    "load_tokenizer",
    "model_card",
    "train_model",
    "train_tokenizer",
    "train_zoo_model",
]

logger = logging.getLogger(__name__)

RESOURCES_DIR = Path(__file__).resolve().parent / "resources"
ZOO_DIR = RESOURCES_DIR / "zoo"
TOKENIZER_FILE = RESOURCES_DIR / "tokenizer" / "tokenizer.json"

# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

PROFILES = ("tiny", "paper")
# Profile for callers that name none, because it needs no download.
DEFAULT_PROFILE = "tiny"

COMPOSITIONS = {
    "falcon-h1": "parallel",
    "qwen3.5": "sequential",
    "qwen2": "transformer",
    "qwen2.5": "transformer",
}


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: a tiny checkpoint in the package or a Hub checkpoint."""

    name: str
    profile: str
    family: str
    composition: str
    size: str
    hub_id: str | None = None
    path: Path | None = None


def _tiny_entry(family: str, size: str) -> ModelEntry:
    short_name = f"{family}-{size}"
    return ModelEntry(
        name=f"tiny/{short_name}",
        profile="tiny",
        family=family,
        composition=COMPOSITIONS[family],
        size=size,
        path=ZOO_DIR / short_name,
    )


def _paper_entry(family: str, size: str, hub_id: str) -> ModelEntry:
    return ModelEntry(
        name=f"paper/{family}-{size}",
        profile="paper",
        family=family,
        composition=COMPOSITIONS[family],
        size=size,
        hub_id=hub_id,
    )


_REGISTRY: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in [
        *(_tiny_entry(family, size) for family in ("falcon-h1", "qwen3.5", "qwen2") for size in ("s", "l")),
        _paper_entry("falcon-h1", "0.5b", "tiiuae/Falcon-H1-0.5B-Base"),
        _paper_entry("falcon-h1", "1.5b", "tiiuae/Falcon-H1-1.5B-Base"),
        _paper_entry("falcon-h1", "3b", "tiiuae/Falcon-H1-3B-Base"),
        _paper_entry("qwen3.5", "0.8b", "Qwen/Qwen3.5-0.8B"),
        _paper_entry("qwen3.5", "2b", "Qwen/Qwen3.5-2B"),
        _paper_entry("qwen3.5", "4b", "Qwen/Qwen3.5-4B"),
        _paper_entry("qwen2.5", "0.5b", "Qwen/Qwen2.5-0.5B"),
        _paper_entry("qwen2.5", "1.5b", "Qwen/Qwen2.5-1.5B"),
        _paper_entry("qwen2.5", "3b", "Qwen/Qwen2.5-3B"),
    ]
}

TINY_NAMES = tuple(name for name, entry in _REGISTRY.items() if entry.profile == "tiny")


def list_models(profile: str | None = None) -> list[ModelEntry]:
    """Return the registry entries of one profile (``"tiny"`` or ``"paper"``), or of both."""
    if profile is not None and profile not in PROFILES:
        raise ValueError(f"Invalid profile {profile!r}. Expected one of {', '.join(PROFILES)} or None.")
    return [entry for entry in _REGISTRY.values() if profile is None or entry.profile == profile]


def _unknown_name_error(name: str) -> ValueError:
    profile = name.split("/", 1)[0]
    if profile not in PROFILES:
        profile = DEFAULT_PROFILE
    valid = [entry.name for entry in list_models(profile)]
    return ValueError(f"Unknown {profile} model {name!r}. Valid names: {', '.join(valid)}.")


def _registry_entry(name: str) -> ModelEntry | None:
    """Return the entry for a full name (``tiny/qwen2-s``) or a unique short one (``qwen2-s``)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.split("/", 1)[0] in PROFILES:
        raise _unknown_name_error(name)
    matches = [entry for entry in _REGISTRY.values() if entry.name.split("/", 1)[1] == name]
    return matches[0] if len(matches) == 1 else None


def _tiny_registry_entry(name: str) -> ModelEntry:
    entry = _registry_entry(name)
    if entry is None or entry.profile != "tiny":
        raise ValueError(f"{name!r} is not a tiny zoo model. Valid names: {', '.join(TINY_NAMES)}.")
    return entry


def _resolve(name: str) -> ModelEntry | None:
    """Return the registry entry that ``name`` denotes, or None for a directory or Hub id.

    A full registry name wins over a directory of the same name, and a directory wins over a
    short name. Raises ``ValueError`` for an unknown ``tiny/...`` or ``paper/...`` name.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if Path(name).is_dir():
        return None
    return _registry_entry(name)


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------

# `<|endoftext|>` is the only special token. It ends every training document and serves as
# EOS, as pad and, only when generation starts from an empty prompt, as BOS. The tokenizer
# never inserts it by itself.
EOS_TOKEN = "<|endoftext|>"
EOS_TOKEN_ID = 0
TOKENIZER_VOCAB_SIZE = 2048
# The zoo trains on 256-token windows, so positions past 256 are valid but untrained.
MAX_POSITION_EMBEDDINGS = 1024


def train_tokenizer(out: str | Path = TOKENIZER_FILE, vocab_size: int = TOKENIZER_VOCAB_SIZE) -> Path:
    """Train the zoo's byte-level BPE tokenizer on GSM8K train text and save it as JSON.

    Training is deterministic: equal inputs give a byte-identical file.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(data.gsm8k_documents("train"), trainer=trainer)
    if tokenizer.token_to_id(EOS_TOKEN) != EOS_TOKEN_ID:
        raise RuntimeError(f"{EOS_TOKEN} did not get id {EOS_TOKEN_ID}.")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    tokenizer.save(str(temporary), pretty=True)
    os.replace(temporary, out)
    return out


def load_tokenizer(path: str | Path = TOKENIZER_FILE):
    """Load the zoo tokenizer as a ``PreTrainedTokenizerFast`` with EOS, BOS and pad set."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Tokenizer file not found: {path}. Rebuild it with "
            f"'python -m hybridspec_lite.zoo tokenizer' or reinstall hybridspec_lite."
        )
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=MAX_POSITION_EMBEDDINGS,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------
# Tiny architectures
# ---------------------------------------------------------------------------------------

# Shared shape of each size. The "l" models have about 3.9 times the parameters of the "s" ones.
_SIZE_SHAPES = {
    "s": {"hidden_size": 96, "num_hidden_layers": 4},
    "l": {"hidden_size": 160, "num_hidden_layers": 8},
}

# MLP widths chosen so that the three families of one size match the Qwen2 parameter count
# within about 1 percent: the Mamba-2 and Gated DeltaNet mixers cost parameters that the MLP gives
# back. `python -m hybridspec_lite.zoo params` prints the resulting counts.
_INTERMEDIATE_SIZES = {
    ("falcon-h1", "s"): 208,
    ("qwen3.5", "s"): 288,
    ("qwen2", "s"): 320,
    ("falcon-h1", "l"): 272,
    ("qwen3.5", "l"): 384,
    ("qwen2", "l"): 448,
}

ATTENTION_HEADS = 4
KEY_VALUE_HEADS = 2
MAMBA_STATE_SIZE = 16
MAMBA_CHUNK_SIZE = 32


def _common_config_kwargs(hidden_size: int, num_hidden_layers: int, intermediate_size: int) -> dict[str, Any]:
    return {
        "vocab_size": TOKENIZER_VOCAB_SIZE,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "intermediate_size": intermediate_size,
        "num_attention_heads": ATTENTION_HEADS,
        "num_key_value_heads": KEY_VALUE_HEADS,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "tie_word_embeddings": True,
        "bos_token_id": EOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_ID,
        "pad_token_id": EOS_TOKEN_ID,
    }


def build_config(name: str):
    """Build the ``transformers`` config of a tiny zoo model, for example ``tiny/qwen2-s``."""
    from transformers import FalconH1Config, Qwen2Config, Qwen3_5TextConfig

    entry = _tiny_registry_entry(name)
    shape = _SIZE_SHAPES[entry.size]
    hidden_size = shape["hidden_size"]
    common = _common_config_kwargs(
        hidden_size, shape["num_hidden_layers"], _INTERMEDIATE_SIZES[(entry.family, entry.size)]
    )
    head_dim = hidden_size // ATTENTION_HEADS

    if entry.family == "falcon-h1":
        # All muP multipliers stay at their 1.0 defaults, with which the zoo's training runs
        # stayed finite and converged under the standard initialisation.
        # NOTE: at the zoo's token budget falcon-h1-l ends no lower in loss than falcon-h1-s,
        # while the Qwen families improve with size. Tuned multipliers might change that.
        return FalconH1Config(
            **common,
            mamba_d_ssm=hidden_size,
            mamba_n_heads=hidden_size // head_dim,
            mamba_d_head="auto",
            mamba_d_state=MAMBA_STATE_SIZE,
            mamba_n_groups=1,
            mamba_chunk_size=MAMBA_CHUNK_SIZE,
        )
    if entry.family == "qwen3.5":
        layer_types = ["linear_attention"] * 3 + ["full_attention"]
        return Qwen3_5TextConfig(
            **common,
            head_dim=head_dim,
            layer_types=layer_types * (shape["num_hidden_layers"] // len(layer_types)),
            linear_num_key_heads=KEY_VALUE_HEADS,
            linear_num_value_heads=ATTENTION_HEADS,
            linear_key_head_dim=head_dim,
            linear_value_head_dim=head_dim,
        )
    return Qwen2Config(**common)


def _new_model(config):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config)


def summarize_config(config) -> dict[str, Any]:
    """Return the architecture fields of a config that a model card lists."""
    keys = [
        "model_type",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "layer_types",
        "max_position_embeddings",
        "tie_word_embeddings",
        "mamba_d_ssm",
        "mamba_n_heads",
        "mamba_d_head",
        "mamba_d_state",
        "mamba_n_groups",
        "mamba_chunk_size",
        "linear_num_key_heads",
        "linear_num_value_heads",
        "linear_key_head_dim",
        "linear_value_head_dim",
    ]
    summary = {}
    for key in keys:
        value = getattr(config, key, None)
        if value is None:
            continue
        # FalconH1Config exposes layer_types as ["hybrid", ...], which adds no information.
        if key == "layer_types" and config.model_type == "falcon_h1":
            continue
        summary[key] = list(value) if isinstance(value, (list, tuple)) else value
    return summary


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


class CheckpointNotAvailableError(OSError):
    """Raised when a Hub checkpoint is neither in the local cache nor downloadable."""


def _hub_offline() -> bool:
    from huggingface_hub import constants

    from_environment = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return bool(constants.HF_HUB_OFFLINE) or (from_environment or "").upper() in {"1", "ON", "YES", "TRUE"}


def _from_hub(hub_id: str, dtype: torch.dtype, from_pretrained_kwargs: dict[str, Any]):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = _hub_offline()
    kwargs = {"local_files_only": offline, **from_pretrained_kwargs}
    try:
        model = AutoModelForCausalLM.from_pretrained(hub_id, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(hub_id, **kwargs)
    except _hub_errors() as error:
        reason = "Hub offline mode is on and it is not in the local cache" if offline else str(error)
        raise CheckpointNotAvailableError(
            f"Checkpoint {hub_id!r} is not available: {reason}. On a machine with network access, "
            f"run 'hf download {hub_id}' ('huggingface-cli download {hub_id}' with older "
            f"huggingface_hub releases) and copy the Hugging Face cache here, or pass the path "
            f"of a local copy to load(). The 'tiny' profile needs no download."
        ) from error
    return model, tokenizer


def _from_directory(directory: Path, dtype: torch.dtype, from_pretrained_kwargs: dict[str, Any]):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"No config.json in model directory {directory}.")
    kwargs = {"local_files_only": True, **from_pretrained_kwargs}
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs)

    has_tokenizer = any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    if has_tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    elif (directory / "card.json").is_file():
        # Zoo checkpoints share the bundled tokenizer instead of storing a copy each.
        expected = json.loads((directory / "card.json").read_text(encoding="utf-8"))["tokenizer"]["sha256"]
        if expected != _sha256(TOKENIZER_FILE):
            raise ValueError(
                f"The checkpoint in {directory} was trained with a tokenizer of sha256 {expected}, "
                f"which differs from the bundled {TOKENIZER_FILE}. Retrain the checkpoint or "
                f"restore the matching tokenizer.json."
            )
        tokenizer = load_tokenizer()
    else:
        raise FileNotFoundError(f"No tokenizer files (tokenizer.json) in model directory {directory}.")
    return model, tokenizer


def _looks_like_path(name: str) -> bool:
    """Return whether ``name`` is meant as a filesystem path rather than a hub id (``owner/name``)."""
    return name.startswith(("/", ".", "~")) or os.sep + os.sep in name or name.count("/") > 1 or "\\" in name


def load(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    **from_pretrained_kwargs: Any,
):
    """Load a causal language model and its tokenizer and return ``(model, tokenizer)``.

    ``name_or_path`` is resolved in this order: a registry name (``tiny/qwen2-s``,
    ``paper/qwen2.5-0.5b``), a local directory, a registry name without its profile prefix
    (``qwen2-s``), and finally a Hugging Face Hub id. The model is cast to ``dtype`` (the tiny
    checkpoints are stored in float16 and upcast), moved to ``device`` and put in eval mode.
    Extra keyword arguments (``revision``, ``cache_dir``, ...) go to ``from_pretrained``.

    Raises ``ValueError`` for an unknown ``tiny/...`` or ``paper/...`` name and
    ``CheckpointNotAvailableError`` for a Hub checkpoint that cannot be loaded.
    """
    name = os.fspath(name_or_path)
    entry = _resolve(name)
    if entry is not None and entry.profile == "tiny":
        if not (entry.path / "config.json").is_file():
            raise FileNotFoundError(
                f"Checkpoint of {entry.name} not found in {entry.path}. Train it with "
                f"'python -m hybridspec_lite.zoo train --name {entry.name}' or reinstall hybridspec_lite."
            )
        model, tokenizer = _from_directory(entry.path, dtype, from_pretrained_kwargs)
    elif entry is not None:
        model, tokenizer = _from_hub(entry.hub_id, dtype, from_pretrained_kwargs)
    elif Path(name).is_dir():
        model, tokenizer = _from_directory(Path(name), dtype, from_pretrained_kwargs)
    elif _looks_like_path(name):
        raise FileNotFoundError(
            f"model directory not found: {name}. Pass an existing directory written by save_pretrained, "
            f"a hub id, or a zoo name ({', '.join(TINY_NAMES)})."
        )
    else:
        model, tokenizer = _from_hub(name, dtype, from_pretrained_kwargs)

    model.to(device)
    model.eval()
    return model, tokenizer


def model_card(name: str | os.PathLike) -> dict[str, Any]:
    """Return the ``card.json`` of a tiny zoo model (by name) or of a checkpoint directory."""
    name = os.fspath(name)
    entry = _resolve(name)
    if entry is not None and entry.profile == "paper":
        raise ValueError(
            f"{entry.name} has no bundled card. Its model card is at https://huggingface.co/{entry.hub_id}."
        )
    if entry is None and not Path(name).is_dir():
        raise _unknown_name_error(name)

    card_file = (entry.path if entry is not None else Path(name)) / "card.json"
    if not card_file.is_file():
        raise FileNotFoundError(f"Model card not found: {card_file}.")
    return json.loads(card_file.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    """Hyperparameters of one training run. The token budget is steps x batch x seq_len."""

    steps: int = 700
    batch_size: int = 8
    seq_len: int = 256
    learning_rate: float = 3e-3
    min_learning_rate_ratio: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.95)
    grad_clip_norm: float = 1.0
    seed: int = 0
    eval_batch_size: int = 16

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len


# Every model of one size gets the same settings, hence the same token budget: 700 steps of
# 8 x 256 tokens is 1,433,600 tokens, 1.05 passes over GSM8K train (1,363,983 tokens with
# one <|endoftext|> per problem).
# Peak learning rates come from 200-step runs at 1e-3, 3e-3 and 6e-3 (all "s" models) and
# 100-step runs at 1.5e-3 and 3e-3 (falcon-h1-l), scaled down a little for the longer run.
ZOO_SETTINGS = {
    "s": TrainSettings(learning_rate=5e-3),
    "l": TrainSettings(learning_rate=3e-3),
}
STORAGE_DTYPE = torch.float16
HELDOUT_TEXT = "GSM8K test split, all 1,319 problems formatted as the training text"


def _encode_documents(tokenizer, documents: Sequence[str]) -> list[list[int]]:
    encoded = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
    return [ids + [tokenizer.eos_token_id] for ids in encoded]


def _pack(documents: Sequence[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenate token lists and cut them into rows of ``seq_len``, dropping the tail."""
    stream = [token for document in documents for token in document]
    rows = len(stream) // seq_len
    if rows == 0:
        raise ValueError(f"Too little text to fill one sequence of {seq_len} tokens.")
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def _training_batches(
    documents: Sequence[list[int]], settings: TrainSettings
) -> Iterator[torch.Tensor]:
    """Yield batches forever: each epoch shuffles the document order, then packs it."""
    epoch = 0
    while True:
        order = list(range(len(documents)))
        random.Random(settings.seed * 1000 + epoch).shuffle(order)
        rows = _pack([documents[index] for index in order], settings.seq_len)
        for start in range(0, len(rows) - settings.batch_size + 1, settings.batch_size):
            yield rows[start : start + settings.batch_size]
        epoch += 1


def _learning_rate_factor(step: int, settings: TrainSettings) -> float:
    """Linear warmup to the peak, then cosine decay to ``min_learning_rate_ratio`` of it."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return settings.min_learning_rate_ratio + (1.0 - settings.min_learning_rate_ratio) * cosine


def _optimizer(model, settings: TrainSettings) -> torch.optim.Optimizer:
    # Weight decay applies to matrices only, not to norms, biases and the SSM's A, D and dt.
    decayed = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    not_decayed = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": settings.weight_decay},
            {"params": not_decayed, "weight_decay": 0.0},
        ],
        lr=settings.learning_rate,
        betas=settings.adam_betas,
    )


@torch.no_grad()
def evaluate_perplexity(model, rows: torch.Tensor, batch_size: int = 16) -> dict[str, float]:
    """Return the mean next-token loss and perplexity of ``model`` over packed ``rows``."""
    model.eval()
    total_loss = 0.0
    total_tokens = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        loss = model(input_ids=batch, labels=batch).loss
        predicted = batch.numel() - batch.shape[0]
        total_loss += loss.item() * predicted
        total_tokens += predicted
    mean_loss = total_loss / total_tokens
    return {"loss": mean_loss, "perplexity": math.exp(mean_loss), "tokens": total_tokens}


def train_model(
    config,
    settings: TrainSettings,
    train_documents: Sequence[list[int]],
    progress_description: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train a fresh model of ``config`` on token documents, packed into ``seq_len`` rows.

    Returns ``(model, stats)``, where ``stats`` contains the per-step losses, the tokens seen
    and the wall-clock seconds. The run is deterministic for a fixed seed and thread count.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model = _new_model(config)
        model.train()
        optimizer = _optimizer(model, settings)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _learning_rate_factor(step, settings)
        )
        batches = _training_batches(train_documents, settings)

        losses = []
        start = time.perf_counter()
        progress = tqdm(
            range(settings.steps), desc=progress_description, unit="step", mininterval=10
        )
        for _ in progress:
            batch = next(batches)
            loss = model(input_ids=batch, labels=batch).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"Training loss became {loss.item()} at step {len(losses)}.")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        seconds = time.perf_counter() - start
        progress.close()
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)

    model.eval()
    stats = {
        "losses": losses,
        "tokens_seen": settings.tokens,
        "training_seconds": seconds,
        "deterministic_algorithms": True,
    }
    return model, stats


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_card(entry: ModelEntry, model, settings: TrainSettings, stats: dict, heldout: dict) -> dict:
    import tokenizers
    import transformers

    losses = stats["losses"]
    tail = losses[-20:]
    embedding_parameters = model.get_input_embeddings().weight.numel()
    return {
        "name": entry.name,
        "family": entry.family,
        "composition": entry.composition,
        "size": entry.size,
        "model_class": type(model).__name__,
        "config": summarize_config(model.config),
        "parameters": model.num_parameters(),
        "parameters_embedding": embedding_parameters,
        "parameters_non_embedding": model.num_parameters() - embedding_parameters,
        "training": {
            "data": "GSM8K train split, all 7,473 problems, one document per problem ended by <|endoftext|>",
            "data_sha256": _sha256(data.GSM8K_FILES["train"]),
            "tokens_seen": stats["tokens_seen"],
            "steps": settings.steps,
            "batch_size": settings.batch_size,
            "seq_len": settings.seq_len,
            "optimizer": "AdamW",
            "learning_rate": settings.learning_rate,
            "schedule": (
                f"linear warmup {settings.warmup_steps} steps, cosine decay to "
                f"{settings.min_learning_rate_ratio} x peak"
            ),
            "weight_decay": settings.weight_decay,
            "adam_betas": list(settings.adam_betas),
            "grad_clip_norm": settings.grad_clip_norm,
            "seed": settings.seed,
            "deterministic_algorithms": stats["deterministic_algorithms"],
            "first_loss": losses[0],
            "final_loss": sum(tail) / len(tail),
            "final_loss_definition": f"mean training loss of the last {len(tail)} steps",
            "training_seconds": stats["training_seconds"],
        },
        "heldout": {
            "text": HELDOUT_TEXT,
            "tokens": heldout["tokens"],
            "seq_len": settings.seq_len,
            "loss": heldout["loss"],
            "perplexity": heldout["perplexity"],
            "weights": "stored float16 weights, upcast to float32",
        },
        "machine": {
            "cpu_model": _cpu_model(),
            "torch_threads": torch.get_num_threads(),
            "logical_cpus": os.cpu_count(),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "tokenizer": {
            "file": "hybridspec_lite/resources/tokenizer/tokenizer.json",
            "sha256": _sha256(TOKENIZER_FILE),
            "vocab_size": TOKENIZER_VOCAB_SIZE,
            "eos_token": EOS_TOKEN,
        },
        "storage_dtype": str(STORAGE_DTYPE).removeprefix("torch."),
        "load_dtype": "float32",
    }


def render_card_markdown(card: dict[str, Any]) -> str:
    """Render a model card README from its ``card.json`` contents."""
    training = card["training"]
    heldout = card["heldout"]
    machine = card["machine"]
    versions = card["versions"]
    tokenizer = card["tokenizer"]
    config_rows = "\n".join(f"| {key} | {value} |" for key, value in card["config"].items())
    return f"""# {card["name"]}

A tiny {card["family"]} model ({card["composition"]} composition, `{card["model_class"]}`
from transformers) in the hybridspec_lite model zoo. It was trained from scratch on GSM8K
math word problems to stand in, offline, for the released {card["family"]} checkpoints.
Its output resembles the training text, but it does not solve the problems.

`python -m hybridspec_lite.zoo train` measured every number below and wrote them to
`card.json`.

## Use

```python
from hybridspec_lite.zoo import load

model, tokenizer = load("{card["name"]}")
```

The weights are stored in {card["storage_dtype"]} to keep the package small, and `load()`
upcasts them to {card["load_dtype"]}. To get the same from `from_pretrained`, pass
`dtype=torch.float32`: its default in transformers 5 is `dtype="auto"`, which keeps the
stored dtype.

The tokenizer is the zoo's shared byte-level BPE (`{tokenizer["file"]}`, vocabulary
{tokenizer["vocab_size"]:,}). `{tokenizer["eos_token"]}` ends each document and is also the
pad token. Prompts have the form `Question: ...\\nAnswer:`. Training used
{training["seq_len"]}-token windows, so quality on longer contexts is untested.

## Model

| field | value |
|---|---|
| parameters | {card["parameters"]:,} (embedding {card["parameters_embedding"]:,}, tied with the output layer) |
{config_rows}

## Training

| field | value |
|---|---|
| data | {training["data"]} |
| tokens seen | {training["tokens_seen"]:,} ({training["steps"]} steps x {training["batch_size"]} sequences x {training["seq_len"]} tokens) |
| optimizer | {training["optimizer"]}, peak learning rate {training["learning_rate"]}, {training["schedule"]}, weight decay {training["weight_decay"]} |
| seed | {training["seed"]} |
| first training loss | {training["first_loss"]:.4f} |
| final training loss | {training["final_loss"]:.4f} ({training["final_loss_definition"]}) |
| training time | {training["training_seconds"]:.1f} s on {machine["cpu_model"]} with {machine["torch_threads"]} torch thread(s) |
| versions | torch {versions["torch"]}, transformers {versions["transformers"]}, tokenizers {versions["tokenizers"]} |

## Held-out evaluation

| field | value |
|---|---|
| text | {heldout["text"]}, packed into {heldout["seq_len"]}-token windows |
| predicted tokens | {heldout["tokens"]:,} |
| mean loss | {heldout["loss"]:.4f} |
| perplexity | {heldout["perplexity"]:.3f} |
| weights | {heldout["weights"]} |

## Licence of the training data

GSM8K is MIT-licensed (openai/grade-school-math). See `hybridspec_lite/resources/data/`.
"""


def _write_checkpoint_atomically(target: Path, write) -> None:
    """Call ``write(directory)`` on a temporary directory, then rename it to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(temporary)
        # mkdtemp creates the directory with mode 0700, and some writers use 0600 files.
        os.chmod(temporary, 0o755)
        for path in temporary.iterdir():
            os.chmod(path, 0o644)
        if target.exists():
            previous = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, previous)
            os.rename(temporary, target)
            shutil.rmtree(previous)
        else:
            os.rename(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def train_zoo_model(
    name: str,
    out_dir: str | Path = ZOO_DIR,
    steps: int | None = None,
    seed: int = 0,
    learning_rate: float | None = None,
) -> dict[str, Any]:
    """Train one tiny zoo model and write its checkpoint and card to ``out_dir``.

    The checkpoint goes to ``out_dir/<name without "tiny/">``. ``steps`` overrides the size's
    step count (and so the token budget), and ``learning_rate`` the size's peak learning rate.
    Returns the card dict.
    """
    from transformers import AutoModelForCausalLM

    entry = _tiny_registry_entry(name)
    settings = dataclasses.replace(ZOO_SETTINGS[entry.size], seed=seed)
    if learning_rate is not None:
        if not learning_rate > 0:
            raise ValueError(f"Invalid learning rate {learning_rate}. Expected a positive number.")
        settings = dataclasses.replace(settings, learning_rate=learning_rate)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"Invalid step count {steps}. Expected at least 1.")
        settings = dataclasses.replace(
            settings, steps=steps, warmup_steps=min(settings.warmup_steps, max(1, steps // 10))
        )

    tokenizer = load_tokenizer()
    train_documents = _encode_documents(tokenizer, data.gsm8k_documents("train"))
    heldout_rows = _pack(_encode_documents(tokenizer, data.gsm8k_documents("test")), settings.seq_len)

    config = build_config(entry.name)
    logger.info("Training %s for %d steps (%d tokens).", entry.name, settings.steps, settings.tokens)
    model, stats = train_model(config, settings, train_documents, progress_description=entry.name)

    def write(directory: Path) -> None:
        model.to(STORAGE_DTYPE).save_pretrained(directory)
        # Evaluate what is shipped: the stored float16 weights, reloaded in float32.
        reloaded = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True)
        heldout = evaluate_perplexity(reloaded, heldout_rows, settings.eval_batch_size)
        card = _build_card(entry, reloaded, settings, stats, heldout)
        (directory / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (directory / "README.md").write_text(render_card_markdown(card), encoding="utf-8")
        write.card = card

    target = Path(out_dir) / entry.name.split("/", 1)[1]
    _write_checkpoint_atomically(target, write)
    card = write.card
    logger.info(
        "Wrote %s: final loss %.4f, held-out perplexity %.3f, %.0f s.",
        target,
        card["training"]["final_loss"],
        card["heldout"]["perplexity"],
        card["training"]["training_seconds"],
    )
    return card


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def _print_parameter_counts() -> None:
    for name in TINY_NAMES:
        config = build_config(name)
        with torch.device("meta"):
            model = _new_model(config)
        print(f"{name:20} {model.num_parameters():>10,}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridspec_lite.zoo", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train tiny zoo models and write their checkpoints")
    selection = train.add_mutually_exclusive_group(required=True)
    selection.add_argument("--name", choices=TINY_NAMES, help="tiny model to train")
    selection.add_argument("--all", action="store_true", help="train all six tiny models, one after another")
    train.add_argument("--steps", type=int, help="optimizer steps (default: 700, of 2,048 tokens each)")
    train.add_argument("--out", type=Path, default=ZOO_DIR, help="output directory (default: the package's zoo)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument(
        "--learning-rate", type=float, help="peak AdamW learning rate (default: 5e-3 for s, 3e-3 for l models)"
    )
    train.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")

    tokenizer = commands.add_parser("tokenizer", help="retrain the zoo tokenizer on GSM8K train")
    tokenizer.add_argument("--out", type=Path, default=TOKENIZER_FILE, help="output tokenizer.json path")

    listing = commands.add_parser("list", help="print the registry")
    listing.add_argument("--profile", choices=PROFILES, help="print only this profile")

    commands.add_parser("params", help="print the parameter count of each tiny architecture")

    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    if arguments.command == "train":
        if arguments.threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(arguments.threads)
        if arguments.threads == 1:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        names = TINY_NAMES if arguments.all else (arguments.name,)
        for name in names:
            train_zoo_model(
                name,
                out_dir=arguments.out,
                steps=arguments.steps,
                seed=arguments.seed,
                learning_rate=arguments.learning_rate,
            )
    elif arguments.command == "tokenizer":
        print(train_tokenizer(arguments.out))
    elif arguments.command == "list":
        for entry in list_models(arguments.profile):
            location = entry.hub_id or entry.path
            print(f"{entry.name:24} {entry.family:10} {entry.composition:12} {entry.size:5} {location}")
    elif arguments.command == "params":
        _print_parameter_counts()
    return 0


if __name__ == "__main__":
    sys.exit(main())
