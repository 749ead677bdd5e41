"""Before and after: two copies of hybridspec_lite timed interleaved in one process.

The baseline is another copy of the ``hybridspec_lite`` package directory (for example an
older commit, exported with ``git archive <commit> hybridspec_lite | tar -x -C /tmp/old``),
imported under the name ``hybridspec_baseline``. Both copies decode the same prompts with the
same model object. Every (version, method) pair runs interleaved batch by batch and
repeated, and the script reports median times, their ratios and a per-round profile of each
version.

    python benchmarks/bench_versions.py --baseline /tmp/old/hybridspec_lite
    python benchmarks/bench_versions.py --baseline /tmp/old/hybridspec_lite --weights random --models tiny/qwen2-s

Writes benchmarks/results/versions.json.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import logging
import sys
from pathlib import Path

import torch
from common import (
    DTYPES,
    RESULTS_DIR,
    TINY_MODELS,
    command_line,
    configure,
    encode_prompts,
    exit_layer_for,
    load_model,
    machine_info,
    median,
    settings_key,
    time_interleaved,
    write_json_atomically,
)
from round_profile import RoundProfiler

import hybridspec_lite

logger = logging.getLogger("benchmarks.versions")

# Settings; the command line overrides each one.
MODELS = TINY_MODELS  # any names from hybridspec_lite.zoo ("tiny/...")
BATCH_SIZES = (1, 8)  # each must divide PROMPTS
PROMPTS = 8  # GSM8K test prompts, seed 0
MAX_NEW_TOKENS = 48  # per prompt; EOS ends a row earlier
K = 2  # tokens drafted per round
REPEATS = 5  # timed runs per variant, after one untimed run
PROFILE_REPEATS = 3  # profiled passes per version, at batch size 1
THREADS = 1  # torch intra-op threads
DEVICE = "cpu"  # "cpu" or "cuda"
DTYPE = "float32"  # "float32", "bfloat16" or "float16"
WEIGHTS = "trained"  # "trained" (the shipped zoo) or "random" (same shapes, untrained)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="directory of the baseline hybridspec_lite package")
    parser.add_argument("--baseline-label", default=None,
                        help="what the baseline is, for the results (default: its directory), e.g. 'commit 1e14f42'")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="zoo model names")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES), help="batch sizes to compare")
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="prompts per run; a multiple of every batch size")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="new tokens per prompt")
    parser.add_argument("--k", type=int, default=K, help="tokens drafted per round")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed runs per variant")
    parser.add_argument("--profile-repeats", type=int, default=PROFILE_REPEATS, help="profiled passes per version")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch intra-op threads")
    parser.add_argument("--device", default=DEVICE, choices=("cpu", "cuda"), help="device to run on")
    parser.add_argument("--dtype", default=DTYPE, choices=tuple(DTYPES), help="model dtype")
    parser.add_argument("--weights", default=WEIGHTS, choices=("trained", "random"), help="trained zoo or random weights")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "versions.json", help="output JSON file")
    args = parser.parse_args(argv)
    if not (args.baseline / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline} is not a package directory (no __init__.py)")
    for size in args.batch_sizes:
        if size < 1 or args.prompts % size:
            parser.error(f"--prompts {args.prompts} is not a multiple of batch size {size}")
    return args


def import_baseline(directory: Path):
    """Import the package in ``directory`` as ``hybridspec_baseline``; its relative imports stay inside it."""
    spec = importlib.util.spec_from_file_location(
        "hybridspec_baseline", directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["hybridspec_baseline"] = package
    spec.loader.exec_module(package)
    return package


def make_draft_for(package, model):
    if package.get_adapter(model).recurrent_kind() is not None:
        return package.make_draft("component", state="shared")
    return package.make_draft("early-exit", exit_layer=exit_layer_for(model))


def bench_model(name, args, device, dtype, versions) -> dict:
    model, tokenizer = load_model(name, device, dtype, args.weights)
    prompts = encode_prompts(tokenizer, args.prompts)
    eos = tokenizer.eos_token_id
    drafts = {label: make_draft_for(package, model) for label, package in versions.items()}

    outputs, variants = {}, {}
    for size in args.batch_sizes:
        batches = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        for label, package in versions.items():
            draft = drafts[label]
            for method in ("plain", "speculative"):
                key = (label, method, size)
                outputs[key] = [None] * len(batches)

                def run(index, batch, package=package, draft=draft, method=method, key=key):
                    if method == "plain":
                        out = package.plain_generate(model, batch, max_new_tokens=args.max_new_tokens, eos_token_id=eos)
                    else:
                        out = package.speculative_generate(
                            model, batch, draft, k=args.k, max_new_tokens=args.max_new_tokens, eos_token_id=eos
                        )
                    outputs[key][index] = out.tokens

                variants[key] = [functools.partial(run, i, batch) for i, batch in enumerate(batches)]

    seconds = time_interleaved(variants, args.repeats, device, progress=name)
    reference = outputs[("baseline", "plain", args.batch_sizes[0])]
    for key, tokens in outputs.items():
        if [t for batch in tokens for t in batch] != [t for batch in reference for t in batch]:
            raise AssertionError(f"{name}: {key} emitted different tokens from the baseline's plain decoding")

    rows = []
    for size in args.batch_sizes:
        for method in ("plain", "speculative"):
            before = median(seconds[("baseline", method, size)])
            after = median(seconds[("current", method, size)])
            rows.append(
                {
                    "batch_size": size,
                    "method": method,
                    "baseline_median_seconds": before,
                    "current_median_seconds": after,
                    "baseline_over_current": before / after,
                }
            )
            logger.info("%s batch %2d %-11s baseline/current time x%.3f", name, size, method, before / after)

    profiles = {}
    for label, package in versions.items():
        passes = []
        for _ in range(args.profile_repeats):
            profiler = RoundProfiler(device, package)
            with profiler.active(drafts[label]):
                for p in prompts:
                    profiler.run(
                        lambda p=p: package.speculative_generate(
                            model, [p], drafts[label], k=args.k, max_new_tokens=args.max_new_tokens, eos_token_id=eos
                        )
                    )
            passes.append(profiler.per_round())
        profiles[label] = {phase: median([p[phase] for p in passes]) for phase in passes[0]}
        logger.info(
            "%s %s per round (ms): %s", name, label,
            ", ".join(f"{phase} {1000 * value:.3f}" for phase, value in profiles[label].items()),
        )
    return {"model": name, "results": rows, "profile_seconds_per_round": profiles}


def main(argv=None) -> int:
    args = parse_args(argv)
    device = configure(args.threads, args.device)
    dtype = DTYPES[args.dtype]
    versions = {"baseline": import_baseline(args.baseline.resolve()), "current": hybridspec_lite}
    settings = {
        "baseline": args.baseline_label or str(args.baseline.resolve()),
        "models": args.models,
        "batch_sizes": args.batch_sizes,
        "prompts": args.prompts,
        "max_new_tokens": args.max_new_tokens,
        "k": args.k,
        "repeats": args.repeats,
        "profile_repeats": args.profile_repeats,
        "weights": args.weights,
        "decoding": "greedy",
    }
    logger.info("torch threads: %d, device %s, dtype %s", torch.get_num_threads(), device, args.dtype)
    models = [bench_model(name, args, device, dtype, versions) for name in args.models]
    payload = {
        "benchmark": "versions",
        "command": command_line(),
        "settings": settings,
        "settings_key": settings_key(settings),
        "machine": machine_info(device, dtype),
        "models": models,
    }
    write_json_atomically(args.out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
