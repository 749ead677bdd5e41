"""Throughput of plain and speculative decoding at several batch sizes on the tiny zoo.

For each model, every (batch size, method) pair decodes the same prompts, split into
batches of that size. The pairs run interleaved batch by batch and repeated, and the figure
is generated tokens divided by the median wall time. The draft is the component draft (shared state)
for the hybrids and the early-exit draft at half depth for Qwen2.

    python benchmarks/bench_batch.py                  # trained tiny zoo, about 15 minutes on 1 thread
    python benchmarks/bench_batch.py --weights random --models tiny/falcon-h1-s --repeats 1

Writes benchmarks/results/batch.json.
"""

from __future__ import annotations

import argparse
import functools
import logging
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

from hybridspec_lite import get_adapter, make_draft, plain_generate, speculative_generate

logger = logging.getLogger("benchmarks.batch")

# Settings; the command line overrides each one.
MODELS = TINY_MODELS  # any names from hybridspec_lite.zoo ("tiny/...")
BATCH_SIZES = (1, 4, 16)  # each must divide PROMPTS
PROMPTS = 16  # GSM8K test prompts, seed 0
MAX_NEW_TOKENS = 48  # per prompt; EOS ends a row earlier
K = 2  # tokens drafted per round
REPEATS = 3  # timed runs per variant, after one untimed run
THREADS = 1  # torch intra-op threads
DEVICE = "cpu"  # "cpu" or "cuda"
DTYPE = "float32"  # "float32", "bfloat16" or "float16"
WEIGHTS = "trained"  # "trained" (the shipped zoo) or "random" (same shapes, untrained)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="zoo model names")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCH_SIZES), help="batch sizes to compare")
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="prompts per run; a multiple of every batch size")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="new tokens per prompt")
    parser.add_argument("--k", type=int, default=K, help="tokens drafted per round")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed runs per variant")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch intra-op threads")
    parser.add_argument("--device", default=DEVICE, choices=("cpu", "cuda"), help="device to run on")
    parser.add_argument("--dtype", default=DTYPE, choices=tuple(DTYPES), help="model dtype")
    parser.add_argument("--weights", default=WEIGHTS, choices=("trained", "random"), help="trained zoo or random weights")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "batch.json", help="output JSON file")
    args = parser.parse_args(argv)
    for size in args.batch_sizes:
        if size < 1 or args.prompts % size:
            parser.error(f"--prompts {args.prompts} is not a multiple of batch size {size}")
    return args


def draft_for(model):
    """Return (draft, description): the component draft for a hybrid, else early exit at half depth."""
    if get_adapter(model).recurrent_kind() is not None:
        return make_draft("component", state="shared"), "component (shared state)"
    exit_layer = exit_layer_for(model)
    return make_draft("early-exit", exit_layer=exit_layer), f"early-exit (E={exit_layer})"


def decode_one(model, batch, eos, max_new_tokens, draft=None, k=0):
    """Decode one batch with plain decoding, or with ``draft`` when one is given."""
    if draft is None:
        return plain_generate(model, batch, max_new_tokens=max_new_tokens, eos_token_id=eos)
    return speculative_generate(model, batch, draft, k=k, max_new_tokens=max_new_tokens, eos_token_id=eos)


def bench_model(name: str, args, device, dtype) -> dict:
    model, tokenizer = load_model(name, device, dtype, args.weights)
    prompts = encode_prompts(tokenizer, args.prompts)
    eos = tokenizer.eos_token_id
    draft, draft_name = draft_for(model)

    variants, last = {}, {}
    for size in args.batch_sizes:
        batches = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        for method in ("plain", "speculative"):
            key = (method, size)
            chosen = draft if method == "speculative" else None
            last[key] = [None] * len(batches)

            def run(index, batch, key=key, chosen=chosen):
                last[key][index] = decode_one(model, batch, eos, args.max_new_tokens, chosen, args.k)

            variants[key] = [functools.partial(run, i, batch) for i, batch in enumerate(batches)]

    seconds = time_interleaved(variants, args.repeats, device, progress=name)

    rows = []
    smallest = min(args.batch_sizes)
    reference = [t for out in last[("plain", smallest)] for t in out.tokens]
    for size in args.batch_sizes:
        for method in ("plain", "speculative"):
            outputs = last[(method, size)]
            tokens = [t for out in outputs for t in out.tokens]
            # Every row must equal its own greedy decoding, whatever the method and batch size.
            if tokens != reference:
                raise AssertionError(
                    f"{name}: {method} decoding at batch size {size} differs from plain decoding at batch size {smallest}"
                )
            generated = sum(len(t) for t in tokens)
            total = sum((out.total for out in outputs[1:]), outputs[0].total)
            rows.append(
                {
                    "batch_size": size,
                    "method": method,
                    "draft": draft_name if method == "speculative" else None,
                    "generated_tokens": generated,
                    "seconds": seconds[(method, size)],
                    "median_seconds": median(seconds[(method, size)]),
                    "tokens_per_second": generated / median(seconds[(method, size)]),
                    "alpha": total.alpha if method == "speculative" else None,
                    "tau": total.tau if method == "speculative" else None,
                }
            )
    by_key = {(r["method"], r["batch_size"]): r for r in rows}
    for size in args.batch_sizes:
        spec, plain = by_key[("speculative", size)], by_key[("plain", size)]
        spec["speedup_vs_plain"] = spec["tokens_per_second"] / plain["tokens_per_second"]
    for method in ("plain", "speculative"):
        base = by_key[(method, smallest)]["tokens_per_second"]
        for size in args.batch_sizes:
            by_key[(method, size)]["throughput_vs_smallest_batch"] = by_key[(method, size)]["tokens_per_second"] / base
    for r in rows:
        logger.info(
            "%s batch %2d %-11s %7.1f tokens/s%s",
            name, r["batch_size"], r["method"], r["tokens_per_second"],
            f"  x{r['speedup_vs_plain']:.2f} vs plain, alpha {r['alpha']:.3f}" if r["method"] == "speculative" else "",
        )
    return {"model": name, "family": model.config.model_type, "draft": draft_name, "results": rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    device = configure(args.threads, args.device)
    dtype = DTYPES[args.dtype]
    settings = {
        "models": args.models,
        "batch_sizes": args.batch_sizes,
        "prompts": args.prompts,
        "prompt_set": "GSM8K test, hybridspec_lite.data.prompts('gsm8k', n, seed=0)",
        "max_new_tokens": args.max_new_tokens,
        "eos": "the tokenizer's EOS ends a row",
        "k": args.k,
        "repeats": args.repeats,
        "weights": args.weights,
        "decoding": "greedy",
    }
    logger.info("torch threads: %d, device %s, dtype %s", torch.get_num_threads(), device, args.dtype)
    models = [bench_model(name, args, device, dtype) for name in args.models]
    payload = {
        "benchmark": "batch",
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
