"""Shared parts of the benchmark scripts: models, prompts, interleaved timing, machine facts.

Timing rules that every script follows:

- one intra-op thread (``torch.set_num_threads``), stated in the output;
- every variant under comparison runs once untimed, then all variants run in turn, repeated,
  one prompt or batch at a time, in a shuffled order;
- reported figures are medians over the repeats, and comparisons are ratios of medians
  taken in the same run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

logger = logging.getLogger("benchmarks")

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPOSITORY / "benchmarks" / "results"

TINY_MODELS = (
    "tiny/falcon-h1-s",
    "tiny/falcon-h1-l",
    "tiny/qwen3.5-s",
    "tiny/qwen3.5-l",
    "tiny/qwen2-s",
    "tiny/qwen2-l",
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def configure(threads: int, device: str) -> torch.device:
    """Set up logging, the intra-op thread count and the device; return the device."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but torch.cuda.is_available() is False")
    return torch.device(device)


def load_model(name: str, device: torch.device, dtype: torch.dtype, weights: str):
    """Load a tiny zoo model and the zoo tokenizer; ``weights="random"`` builds it untrained.

    Random weights give the same speed per forward but a different acceptance rate, so
    they serve for building and debugging the scripts, not for reported figures.
    """
    from transformers import AutoModelForCausalLM

    from hybridspec_lite import zoo

    if weights == "trained":
        try:
            model, tokenizer = zoo.load(name, dtype=dtype, device=device)
        except FileNotFoundError as error:
            raise SystemExit(f"error: {error}\nRun with --weights random to benchmark untrained models.") from None
        return model, tokenizer
    if weights != "random":
        raise ValueError(f"weights must be 'trained' or 'random', got {weights!r}")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(zoo.build_config(name)).to(device=device, dtype=dtype).eval()
    return model, zoo.load_tokenizer()


def encode_prompts(tokenizer, count: int) -> list[list[int]]:
    """Return the token ids of ``count`` GSM8K test prompts (seed 0)."""
    from hybridspec_lite import data

    return [tokenizer(text).input_ids for text in data.prompts("gsm8k", count, seed=0)]


def exit_layer_for(model) -> int:
    """Return the early-exit draft depth used by the benchmarks: half the decoder layers."""
    return max(1, model.config.num_hidden_layers // 2)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    variants: dict[Any, list[Callable[[], Any]]],
    repeats: int,
    device: torch.device,
    progress: str = "",
    warm_up: bool = True,
) -> dict[Any, list[float]]:
    """Time variants made of units (one prompt or one batch each), interleaved unit by unit.

    Every unit runs once untimed when ``warm_up`` is set. In each of ``repeats`` rounds, unit
    i of every variant runs before unit i + 1 of any, so that load from other processes on a
    shared machine falls on all variants alike. The variant order is shuffled for every unit,
    with a fixed seed. A run can leave the allocator and caches in a state that slows the
    next one, and a fixed or merely rotated order would charge that to the same variant every
    time. Returns, per variant, the summed seconds of its units in each round.
    """
    from tqdm import tqdm

    shuffler = random.Random(0)
    names = list(variants)
    if warm_up:
        for name in names:
            for unit in variants[name]:
                unit()
    longest = max(len(units) for units in variants.values())
    seconds: dict[Any, list[float]] = {name: [] for name in names}
    for _ in tqdm(range(repeats), desc=progress, leave=False, disable=not progress):
        totals = dict.fromkeys(names, 0.0)
        for index in range(longest):
            order = names[:]
            shuffler.shuffle(order)
            for name in order:
                if index >= len(variants[name]):
                    continue
                synchronize(device)
                start = time.perf_counter()
                variants[name][index]()
                synchronize(device)
                totals[name] += time.perf_counter() - start
        for name in names:
            seconds[name].append(totals[name])
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Return the hardware and software facts that a reader needs to compare figures."""
    import transformers

    import hybridspec_lite

    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hybridspec_lite": hybridspec_lite.__version__,
        "hybridspec_lite_path": display_path(Path(hybridspec_lite.__file__).parent),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def display_path(path: Path) -> str:
    """Return ``path`` relative to the repository when it lies inside it, else absolute."""
    path = path.resolve()
    return str(path.relative_to(REPOSITORY)) if path.is_relative_to(REPOSITORY) else str(path)


def settings_key(settings: dict[str, Any]) -> str:
    """Return a short hash of the run settings, stored with the results."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to a temporary file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            json.dump(payload, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        # NamedTemporaryFile creates the file readable by its owner only; give it the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    logger.info("wrote %s", path)


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])
