"""Speculative decoding speed on the tiny zoo: measured against ideal, ours against transformers.

For each model, in one run and at batch size 1, with every variant interleaved and repeated:

1. the cost ratio c = median time of one draft step / median time of one target decode step,
   each timed directly on the same cache, and the cost of one verification forward of k + 1
   tokens and of one rollback relative to a decode step;
2. the acceptance rate alpha of the draft, the ideal speedup
   S = (1 - alpha^(k+1)) / ((1 - alpha)(k c + 1)) and the measured speedup of
   ``speculative_generate`` over ``plain_generate``, and their ratio;
3. transformers' own paths on the same model and prompts: greedy ``model.generate()``,
   ``model.generate(assistant_model=...)`` with an attention-free copy of the model that
   shares its weights (hybrids), and ``model.generate(assistant_early_exit=E)`` (Qwen2).
   Every variant must emit the same tokens, which the script asserts;
4. a per-round profile of ``speculative_generate``: draft, verify, accept, rollback and the
   remaining Python overhead (see round_profile.py).

    python benchmarks/bench_speed.py                    # trained tiny zoo on the CPU, about 10 minutes
    python benchmarks/bench_speed.py --device cuda      # the same on a GPU
    python benchmarks/bench_speed.py --weights random --models tiny/falcon-h1-s --repeats 1

Writes benchmarks/results/speed.json.
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import random
import time
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
    synchronize,
    time_interleaved,
    write_json_atomically,
)
from round_profile import RoundProfiler

from hybridspec_lite import get_adapter, make_draft, plain_generate, speculative_generate
from hybridspec_lite.decode import prefill, verify
from hybridspec_lite.metrics import expected_tau, ideal_speedup
from hybridspec_lite.state import rollback, start_recording

logger = logging.getLogger("benchmarks.speed")

# Settings; the command line overrides each one.
MODELS = TINY_MODELS  # any names from hybridspec_lite.zoo ("tiny/...")
PROMPTS = 8  # GSM8K test prompts (seed 0), decoded one at a time
MAX_NEW_TOKENS = 48  # per prompt; EOS ends a prompt earlier
K = 2  # tokens drafted per round
REPEATS = 3  # timed runs of every variant, after one untimed run
STEP_REPEATS = 40  # timed single forwards per kind for the cost ratio
PROFILE_REPEATS = 3  # profiled passes over the prompts
THREADS = 1  # torch intra-op threads
DEVICE = "cpu"  # "cpu" or "cuda"
DTYPE = "float32"  # "float32", "bfloat16" or "float16"
WEIGHTS = "trained"  # "trained" (the shipped zoo) or "random" (same shapes, untrained)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="zoo model names")
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="prompts, decoded one at a time")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="new tokens per prompt")
    parser.add_argument("--k", type=int, default=K, help="tokens drafted per round")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed runs per variant")
    parser.add_argument("--step-repeats", type=int, default=STEP_REPEATS, help="timed forwards per step kind")
    parser.add_argument("--profile-repeats", type=int, default=PROFILE_REPEATS, help="profiled passes over the prompts")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch intra-op threads")
    parser.add_argument("--device", default=DEVICE, choices=("cpu", "cuda"), help="device to run on")
    parser.add_argument("--dtype", default=DTYPE, choices=tuple(DTYPES), help="model dtype")
    parser.add_argument("--weights", default=WEIGHTS, choices=("trained", "random"), help="trained zoo or random weights")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "speed.json", help="output JSON file")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------
# Drafts: ours and the transformers equivalent
# ---------------------------------------------------------------------------------------


def attention_free_copy(model, k: int):
    """Return a second model object that shares every weight of ``model`` and has no attention.

    This is what a user can build today for ``generate(assistant_model=...)``: the same
    class instantiated from the config, the same tensors loaded with ``assign=True`` (no
    copy), and the adapter's attention removal entered and never left.
    """
    weights = model.state_dict()
    twin = type(model)(model.config)
    twin.load_state_dict(weights, assign=True)
    twin.to(model.device).eval()
    # state_dict() names tied weights (lm_head and embeddings) twice, named_parameters() once.
    shared = {name: tensor.data_ptr() for name, tensor in weights.items()}
    for name, parameter in twin.named_parameters():
        if shared.get(name) != parameter.data_ptr():
            raise AssertionError(f"attention-free copy does not share parameter {name}")
    removal = get_adapter(twin).attention_free()
    removal.__enter__()
    # The removal is a generator context manager: when it is garbage-collected it restores
    # the attention, so the copy keeps a reference to it.
    twin._attention_removal = removal
    twin.generation_config = copy.deepcopy(model.generation_config)
    set_assistant_config(twin.generation_config, k)
    return twin


def set_assistant_config(generation_config, k: int) -> None:
    """Draft exactly ``k`` tokens per round, as ``speculative_generate`` does."""
    generation_config.num_assistant_tokens = k
    generation_config.num_assistant_tokens_schedule = "constant"
    # transformers stops drafting early below this draft confidence (default 0.4); 0 disables it.
    generation_config.assistant_confidence_threshold = 0.0


def our_draft(model):
    """Return (draft, kind, exit_layer): the component draft for a hybrid, else early exit at half depth."""
    if get_adapter(model).recurrent_kind() is not None:
        return make_draft("component", state="shared"), "component", None
    exit_layer = exit_layer_for(model)
    return make_draft("early-exit", exit_layer=exit_layer), "early-exit", exit_layer


# ---------------------------------------------------------------------------------------
# Cost ratio: single forwards timed directly
# ---------------------------------------------------------------------------------------


def measure_step_costs(model, prompt, kind, exit_layer, k, repeats, device) -> dict:
    """Time one target decode step, one draft step, one verification of k + 1 tokens and its rollback.

    All run on the cache of ``prompt`` and are rolled back after each timing, so every
    sample starts from the same cache. Only the rollback of the verified block is timed.
    """
    adapter = get_adapter(model)
    ids = torch.tensor([prompt], device=device)
    with torch.inference_mode():
        state, logits = prefill(model, ids, torch.ones_like(ids))
        start_recording(state.cache, k + 1)
        token = logits.argmax(dim=-1)  # [1]
        drafted = token[:, None].expand(-1, k).contiguous()  # [1, k]: any tokens cost the same
        one_token, whole_block = torch.ones_like(token), torch.full_like(token, k + 1)

        def target_step():
            verify(model, state, token, drafted[:, :0]).argmax(dim=-1)

        def draft_step():
            if kind == "component":
                with adapter.attention_free():
                    model(input_ids=token[:, None], cache=state.cache, use_cache=True, logits_to_keep=1).logits.argmax(-1)
            else:
                with adapter.truncated(exit_layer):
                    model(
                        input_ids=token[:, None],
                        cache=state.cache,
                        attention_mask=state.extended_mask(1),
                        position_ids=state.position_ids(1),
                        use_cache=True,
                        logits_to_keep=1,
                    ).logits.argmax(-1)

        def undo_draft_step():
            if kind == "component":
                rollback(state, one_token, kv=False)
            else:
                state.advance(1)
                rollback(state, one_token, num_layers=exit_layer)

        def verify_block():
            verify(model, state, token, drafted).argmax(dim=-1)

        steps = {
            "target_step": (target_step, lambda: rollback(state, one_token)),
            "draft_step": (draft_step, undo_draft_step),
            "verify_block": (verify_block, None),
        }
        seconds = {name: [] for name in (*steps, "rollback_block")}
        names = list(steps)
        shuffler = random.Random(0)
        for repeat in range(repeats + 1):
            order = names[:]
            shuffler.shuffle(order)
            for name in order:
                run, undo = steps[name]
                synchronize(device)
                start = time.perf_counter()
                run()
                synchronize(device)
                elapsed = time.perf_counter() - start
                if name == "verify_block":
                    # The rollback of a whole verified block is the worst case of a round.
                    start = time.perf_counter()
                    rollback(state, whole_block)
                    synchronize(device)
                    if repeat:
                        seconds["rollback_block"].append(time.perf_counter() - start)
                else:
                    undo()
                if repeat:  # the first pass warms up
                    seconds[name].append(elapsed)
    medians = {name: median(values) for name, values in seconds.items()}
    return {
        "median_seconds": medians,
        "cost_ratio": medians["draft_step"] / medians["target_step"],
        "verify_block_vs_step": medians["verify_block"] / medians["target_step"],
        "rollback_block_vs_verify": medians["rollback_block"] / medians["verify_block"],
        "samples": repeats,
    }


# ---------------------------------------------------------------------------------------
# Decoding variants
# ---------------------------------------------------------------------------------------


def build_variants(model, prompts, eos, args, draft, kind, exit_layer, outputs):
    """Return {variant: [one run() per prompt]}; each run stores its tokens in ``outputs[variant]``."""
    device = model.device
    generate_kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos)

    def ours_plain(index, prompt):
        out = plain_generate(model, [prompt], max_new_tokens=args.max_new_tokens, eos_token_id=eos)
        outputs["ours_plain"][index] = out.tokens[0]

    def ours_speculative(index, prompt):
        out = speculative_generate(model, [prompt], draft, k=args.k, max_new_tokens=args.max_new_tokens, eos_token_id=eos)
        outputs["ours_speculative"][index] = out.tokens[0]
        outputs["ours_speculative_metrics"][index] = out.total

    def transformers_generate(index, prompt, **extra):
        ids = torch.tensor([prompt], device=device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **generate_kwargs, **extra)
        return out[0, ids.shape[1] :].tolist()

    def transformers_plain(index, prompt):
        outputs["transformers_generate"][index] = transformers_generate(index, prompt)

    runs = {
        "ours_plain": ours_plain,
        "transformers_generate": transformers_plain,
        "ours_speculative": ours_speculative,
    }
    if kind == "component":
        assistant = attention_free_copy(model, args.k)

        def transformers_assisted(index, prompt):
            outputs["transformers_assisted"][index] = transformers_generate(index, prompt, assistant_model=assistant)

        runs["transformers_assisted"] = transformers_assisted
    else:
        set_assistant_config(model.generation_config, args.k)

        def transformers_early_exit(index, prompt):
            outputs["transformers_early_exit"][index] = transformers_generate(
                index, prompt, assistant_early_exit=exit_layer
            )

        runs["transformers_early_exit"] = transformers_early_exit

    for name in (*runs, "ours_speculative_metrics"):
        outputs[name] = [None] * len(prompts)
    return {name: [functools.partial(run, i, p) for i, p in enumerate(prompts)] for name, run in runs.items()}


def compare_tokens(model_name: str, outputs: dict, variants) -> dict:
    """Compare every variant's tokens with ``plain_generate``'s, prompt by prompt.

    Ours and plain ``generate()`` must match exactly, so a difference raises. transformers'
    assisted paths are recorded, not asserted: in transformers 5.25 they can differ on the
    hybrids (see the NOTE below).
    """
    reference = outputs["ours_plain"]
    found = {}
    for variant in variants:
        divergence = [first_difference(a, b) for a, b in zip(outputs[variant], reference)]
        found[variant] = {
            "prompts_identical": sum(d is None for d in divergence),
            "prompts": len(divergence),
            "first_difference": divergence,
        }
        if found[variant]["prompts_identical"] == len(divergence):
            continue
        if variant in ("ours_speculative", "transformers_generate"):
            raise AssertionError(f"{model_name}: {variant} emitted different tokens from plain greedy decoding")
        # NOTE: transformers 5.25 assisted decoding records num_assistant_tokens recurrent states
        # on the target's cache but verifies num_assistant_tokens + 1 tokens. When every
        # candidate is rejected, the Mamba-2 or Gated DeltaNet state goes back one token too far,
        # so the output drifts from greedy decoding.
        logger.warning(
            "%s: %s differs from plain greedy decoding on %d of %d prompts",
            model_name, variant, len(divergence) - found[variant]["prompts_identical"], len(divergence),
        )
    return found


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Return the first position where two token lists differ, or None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_variant(name, units, errors) -> bool:
    """Run every unit once; on an exception record its message under ``name`` and return False."""
    try:
        for unit in units:
            unit()
    except Exception as error:  # noqa: BLE001 - transformers' unsupported paths raise several types
        errors[name] = f"{type(error).__name__}: {error}"
        logger.warning("%s raised %s", name, errors[name])
        return False
    return True


def profile_rounds(model, prompts, eos, args, draft, device) -> dict:
    """Return the median over profiled passes of seconds per round of each phase."""
    passes = []
    for _ in range(args.profile_repeats):
        profiler = RoundProfiler(device)
        with profiler.active(draft):
            for p in prompts:
                profiler.run(
                    lambda p=p: speculative_generate(
                        model, [p], draft, k=args.k, max_new_tokens=args.max_new_tokens, eos_token_id=eos
                    )
                )
        passes.append(profiler.per_round())
    phases = passes[0].keys()
    return {phase: median([p[phase] for p in passes]) for phase in phases} | {"rounds_per_pass": profiler.rounds}


# ---------------------------------------------------------------------------------------
# One model
# ---------------------------------------------------------------------------------------


def bench_model(name: str, args, device, dtype) -> dict:
    model, tokenizer = load_model(name, device, dtype, args.weights)
    prompts = encode_prompts(tokenizer, args.prompts)
    eos = tokenizer.eos_token_id
    draft, kind, exit_layer = our_draft(model)

    costs = measure_step_costs(model, prompts[0], kind, exit_layer, args.k, args.step_repeats, device)

    outputs, errors = {}, {}
    variants = build_variants(model, prompts, eos, args, draft, kind, exit_layer, outputs)
    # Running every unit once is also the warm-up.
    variants = {n: units for n, units in variants.items() if check_variant(n, units, errors)}
    seconds = time_interleaved(variants, args.repeats, device, progress=name, warm_up=False)

    identical = compare_tokens(name, outputs, variants)
    metrics = outputs["ours_speculative_metrics"]
    total = sum(metrics[1:], metrics[0])
    alpha = total.alpha

    med = {variant: median(values) for variant, values in seconds.items()}
    ideal = ideal_speedup(alpha, args.k, costs["cost_ratio"])
    # The same model with the measured cost of a verification instead of one decode step.
    ideal_with_verify = expected_tau(alpha, args.k) / (args.k * costs["cost_ratio"] + costs["verify_block_vs_step"])
    measured = med["ours_plain"] / med["ours_speculative"]
    summary = {
        "alpha": alpha,
        "tau": total.tau,
        "k": args.k,
        "cost_ratio": costs["cost_ratio"],
        "verify_block_vs_step": costs["verify_block_vs_step"],
        "ideal_speedup": ideal,
        "ideal_speedup_with_measured_verify": ideal_with_verify,
        "measured_speedup": measured,
        "measured_over_ideal": measured / ideal,
        "measured_over_ideal_with_measured_verify": measured / ideal_with_verify,
        "transformers_generate_over_ours_plain": med["transformers_generate"] / med["ours_plain"],
    }
    for assisted in ("transformers_assisted", "transformers_early_exit"):
        if assisted in med:
            summary[f"{assisted}_over_ours_speculative"] = med[assisted] / med["ours_speculative"]
            summary[f"{assisted}_speedup"] = med["ours_plain"] / med[assisted]
    profile = profile_rounds(model, prompts, eos, args, draft, device)

    logger.info(
        "%s: alpha %.3f, c %.3f, ideal x%.2f, measured x%.2f (%.0f%% of ideal); transformers generate %.2fx "
        "our plain time%s",
        name, alpha, costs["cost_ratio"], ideal, measured, 100 * measured / ideal,
        summary["transformers_generate_over_ours_plain"],
        "".join(f"; {a} {summary[a + '_over_ours_speculative']:.2f}x our speculative time"
                for a in ("transformers_assisted", "transformers_early_exit") if a + "_over_ours_speculative" in summary),
    )
    logger.info(
        "%s per round (ms): %s", name,
        ", ".join(f"{phase} {1000 * value:.2f}" for phase, value in profile.items() if phase != "rounds_per_pass"),
    )
    return {
        "model": name,
        "family": model.config.model_type,
        "draft": kind if exit_layer is None else f"{kind} (E={exit_layer})",
        "exit_layer": exit_layer,
        "generated_tokens": {variant: sum(len(t) for t in outputs[variant]) for variant in variants},
        "identical_to_plain": identical,
        "summary": summary,
        "step_costs": costs,
        "seconds": seconds,
        "median_seconds": med,
        "tokens_per_second": {variant: sum(len(t) for t in outputs[variant]) / med[variant] for variant in variants},
        "errors": errors,
        "profile_seconds_per_round": profile,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    device = configure(args.threads, args.device)
    dtype = DTYPES[args.dtype]
    settings = {
        "models": args.models,
        "batch_size": 1,
        "prompts": args.prompts,
        "prompt_set": "GSM8K test, hybridspec_lite.data.prompts('gsm8k', n, seed=0)",
        "max_new_tokens": args.max_new_tokens,
        "eos": "the tokenizer's EOS ends a prompt",
        "k": args.k,
        "repeats": args.repeats,
        "step_repeats": args.step_repeats,
        "profile_repeats": args.profile_repeats,
        "weights": args.weights,
        "decoding": "greedy",
        "transformers_assistant": "num_assistant_tokens=k, schedule 'constant', assistant_confidence_threshold=0",
    }
    logger.info("torch threads: %d, device %s, dtype %s", torch.get_num_threads(), device, args.dtype)
    models = [bench_model(name, args, device, dtype) for name in args.models]
    payload = {
        "benchmark": "speed",
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
