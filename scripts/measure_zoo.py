"""Measure the tiny zoo with the engine: the README's zoo table and the predictor's fit points.

    python scripts/measure_zoo.py --table          # markdown table for the README
    python scripts/measure_zoo.py --fit-points     # writes hybridspec_lite/resources/fit_points.json

Greedy decoding, batch size 1, float32 on the CPU with one thread; every setting is printed
with the results.
"""

from __future__ import annotations

import argparse
import platform

import torch
import transformers
from tqdm import tqdm

import hybridspec_lite as hs
from hybridspec_lite import data, zoo
from hybridspec_lite.adapters import get_adapter
from hybridspec_lite.metrics import summed
from hybridspec_lite.perplexity import evaluate_ablation
from hybridspec_lite.predictor import DEFAULT_FIT_POINTS_FILE, FitPoint, save_fit_points

# Settings of every measurement; the table states them.
N_PROMPTS = 16  # GSM8K test prompts, seed 0
MAX_NEW_TOKENS = 48
PPL_TOKENS = 16384  # WikiText-2 test tokens scored for the perplexity ratio
PPL_WINDOW, PPL_STRIDE = 512, 256
FIT_KS = (1, 2, 4, 8)


def acceptance(model, tokenizer, draft, k: int) -> float | None:
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in data.prompts("gsm8k", N_PROMPTS, seed=0)]
    runs = [
        hs.speculative_generate(model, [p], draft, k=k, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=tokenizer.eos_token_id).total
        for p in prompts
    ]
    return summed(runs).alpha


def attention_ratio(model, tokenizer) -> float:
    tokens = tokenizer(data.load_wikitext2_test(), add_special_tokens=False)["input_ids"][:PPL_TOKENS]
    return evaluate_ablation(model, tokens, "attention", window=PPL_WINDOW, stride=PPL_STRIDE, progress=False).ratio


def table() -> str:
    rows = [
        "| model | composition | parameters | tokens seen | held-out perplexity | component α, k=2 | early-exit α, k=2 (E) |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in tqdm(zoo.list_models("tiny"), desc="zoo"):
        model, tokenizer = zoo.load(entry.name)
        card = zoo.model_card(entry.name)
        adapter = get_adapter(model)
        exit_layer = adapter.num_layers // 2
        component = "none (pure Transformer)"
        if adapter.recurrent_kind() is not None:
            component = f"{acceptance(model, tokenizer, hs.make_draft('component'), 2):.3f}"
        early = acceptance(model, tokenizer, hs.make_draft("early-exit", exit_layer=exit_layer), 2)
        rows.append(
            f"| `{entry.name}` | {adapter.composition} | {card['parameters']:,} | {card['training']['tokens_seen']:,} "
            f"| {card['heldout']['perplexity']:.1f} | {component} | {early:.3f} ({exit_layer}) |"
        )
    rows.append("")
    rows.append(
        f"α measured by `scripts/measure_zoo.py --table`: greedy, shared-state component draft, {N_PROMPTS} GSM8K test "
        f"prompts, {MAX_NEW_TOKENS} new tokens each, batch size 1, float32, {platform.processor() or platform.machine()} CPU "
        f"with {torch.get_num_threads()} thread, torch {torch.__version__}, transformers {transformers.__version__}. "
        "Held-out perplexity: GSM8K test, from each model card."
    )
    return "\n".join(rows)


def fit_points() -> list[FitPoint]:
    points = []
    hybrids = [e for e in zoo.list_models("tiny") if e.composition != "transformer"]
    for entry in tqdm(hybrids, desc="fit points"):
        model, tokenizer = zoo.load(entry.name)
        ratio = attention_ratio(model, tokenizer)
        for k in FIT_KS:
            alpha = acceptance(model, tokenizer, hs.make_draft("component"), k)
            source = (
                f"hybridspec_lite {hs.__version__}, scripts/measure_zoo.py: greedy, {N_PROMPTS} GSM8K test prompts, "
                f"{MAX_NEW_TOKENS} new tokens; ratio on {PPL_TOKENS} WikiText-2 test tokens"
            )
            points.append(FitPoint(ratio=ratio, alpha=alpha, k=k, label=entry.name, source=source))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the README's zoo table")
    parser.add_argument("--fit-points", action="store_true", help=f"write {DEFAULT_FIT_POINTS_FILE.name}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.table:
        print(table())
    if args.fit_points:
        points = fit_points()
        save_fit_points(points, DEFAULT_FIT_POINTS_FILE)
        for p in points:
            print(f"{p.label} k={p.k} ratio {p.ratio:.3f} alpha {p.alpha:.3f}")
        print(f"wrote {DEFAULT_FIT_POINTS_FILE}")


if __name__ == "__main__":
    main()
