"""The ``hybridspec`` command line: generate with a speculative draft, or predict alpha."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

logger = logging.getLogger("hybridspec_lite")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridspec", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="generate text with a self-speculative draft and print the metrics")
    gen.add_argument("--model", default="tiny/falcon-h1-s", help="zoo name (tiny/..., paper/...), local directory or hub id")
    gen.add_argument("--draft", choices=("component", "early-exit", "self"), default="component", help="draft strategy")
    gen.add_argument("--k", type=int, default=2, help="tokens drafted per round (>= 1)")
    gen.add_argument("--exit-layer", type=int, default=None, help="decoder layers the early-exit draft runs (1..number of layers)")
    gen.add_argument("--state", choices=("shared", "own"), default="shared", help="recurrent state of the component draft")
    gen.add_argument("--prompt", action="append", default=None, help="prompt text; repeat for a batch")
    gen.add_argument("--prompt-file", default=None, help="file with one prompt per line (added to --prompt)")
    gen.add_argument("--max-new-tokens", type=_positive_int, default=48, help="new tokens per prompt")
    gen.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    gen.add_argument("--top-k", type=int, default=None, help="with --temperature: keep the k most likely tokens")
    gen.add_argument("--top-p", type=float, default=None, help="with --temperature: nucleus mass to keep")
    gen.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    gen.add_argument("--no-baseline", action="store_true", help="skip the plain-decoding baseline run")
    gen.add_argument("--json", action="store_true", help="print the result as JSON")

    pred = commands.add_parser(
        "predict", help="predict alpha from the attention-ablation perplexity ratio, without speculative decoding"
    )
    pred.add_argument("--model", default="tiny/falcon-h1-s", help="zoo name (tiny/..., paper/...), local directory or hub id")
    pred.add_argument("--k", type=_positive_int, default=4, help="draft length the prediction is for")
    pred.add_argument("--points", default=None,
                      help="JSON file of measured (ratio, alpha, k) fitting points (default: the points measured on the tiny zoo)")
    pred.add_argument("--include-reference", action="store_true",
                      help="also fit on the study's two reported points (Falcon-H1-0.5B, Qwen3.5-0.8B)")
    pred.add_argument("--max-tokens", type=_positive_int, default=16384,
                      help="score at most this many WikiText-2 test tokens (the whole split is slow on a CPU)")
    pred.add_argument("--window", type=_positive_int, default=512, help="perplexity window in tokens")
    pred.add_argument("--stride", type=_positive_int, default=256, help="perplexity stride in tokens (< window)")
    pred.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8") as handle:
                prompts += [line.rstrip("\n") for line in handle if line.strip()]
        except FileNotFoundError:
            raise SystemExit(f"error: prompt file not found: {args.prompt_file}") from None
    if not prompts:
        raise SystemExit("error: no prompt given: pass --prompt TEXT (repeatable) or --prompt-file FILE")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise SystemExit(f"error: prompt {i} is empty: give some text")
    return prompts


def run_generate(args) -> dict:
    from . import zoo
    from .decode import plain_generate, speculative_generate
    from .drafts import make_draft
    from .sampling import SamplingConfig

    if args.k < 1:
        raise SystemExit(f"error: --k must be >= 1, got {args.k}")
    prompts = _read_prompts(args)
    if args.temperature is None and (args.top_k is not None or args.top_p is not None):
        raise SystemExit("error: --top-k and --top-p need --temperature (sampling); greedy uses neither")
    try:
        sampling = (
            SamplingConfig(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
            if args.temperature is not None
            else SamplingConfig()
        )
        draft = make_draft(args.draft, state=args.state, exit_layer=args.exit_layer)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    try:
        model, tokenizer = zoo.load(args.model)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None

    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    settings = dict(max_new_tokens=args.max_new_tokens, eos_token_id=tokenizer.eos_token_id, sampling=sampling,
                    pad_token_id=tokenizer.pad_token_id)
    try:
        out = speculative_generate(
            model, prompt_ids, draft, k=args.k, generator=torch.Generator().manual_seed(args.seed), **settings
        )
        baseline = None
        if not args.no_baseline:
            baseline = plain_generate(model, prompt_ids, generator=torch.Generator().manual_seed(args.seed), **settings)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None

    return {
        "model": args.model,
        "draft": args.draft,
        "state": args.state if args.draft == "component" else None,
        "exit_layer": args.exit_layer if args.draft == "early-exit" else None,
        "k": args.k,
        "decoding": sampling.describe(),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(model.device),
        "prompts": prompts,
        "texts": [tokenizer.decode(t, skip_special_tokens=True) for t in out.tokens],
        "metrics": out.total.to_dict(),
        "rows": [m.to_dict() for m in out.rows],
        "baseline": baseline.total.to_dict() if baseline else None,
    }


def format_generate(result: dict) -> str:
    m = result["metrics"]
    lines = []
    for prompt, text in zip(result["prompts"], result["texts"]):
        lines += [f"> {prompt}", text, ""]

    def fmt(value, spec=".3f"):
        return "n/a" if value is None else format(value, spec)

    draft = result["draft"] + (f" ({result['state']} state)" if result["state"] else "")
    draft += f" (exit layer {result['exit_layer']})" if result["exit_layer"] else ""
    lines += [
        f"model {result['model']}, draft {draft}, k {result['k']}, {result['decoding']}, "
        f"{len(result['prompts'])} prompt(s), {result['dtype']} on {result['device']}",
        f"alpha (accepted / drafted) {fmt(m['alpha'])} = {m['accepted']} / {m['drafted']}",
        f"tau (tokens per verification round) {fmt(m['tau'], '.2f')} over {m['rounds']} rounds",
        "acceptance by draft position " + ", ".join(fmt(a, ".2f") for a in m["acceptance_by_position"]),
        f"time: draft {m['draft_seconds']:.3f} s, verify {m['verify_seconds']:.3f} s, other {m['other_seconds']:.3f} s, "
        f"total {m['total_seconds']:.3f} s, {fmt(m['tokens_per_second'], '.1f')} tokens/s",
    ]
    if result["baseline"]:
        b = result["baseline"]
        speedup = b["total_seconds"] / m["total_seconds"] if m["total_seconds"] else None
        lines.append(
            f"plain decoding, same run: {b['total_seconds']:.3f} s, {fmt(b['tokens_per_second'], '.1f')} tokens/s; "
            f"speedup {fmt(speedup, '.2f')}x"
        )
    return "\n".join(lines)


def run_predict(args) -> dict:
    from . import zoo
    from .data import load_wikitext2_test
    from .predictor import DEFAULT_FIT_POINTS_FILE, load_fit_points, predict_for_model

    points_file = args.points or DEFAULT_FIT_POINTS_FILE
    try:
        points = load_fit_points(points_file) if (args.points or DEFAULT_FIT_POINTS_FILE.exists()) else []
        model, tokenizer = zoo.load(args.model)
        tokens = tokenizer(load_wikitext2_test(), add_special_tokens=False)["input_ids"][: args.max_tokens]
        result = predict_for_model(
            model, tokens, args.k, points, include_reference=args.include_reference,
            window=args.window, stride=args.stride, progress=not args.json,
        )
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    result["model"] = args.model
    result["points_file"] = str(points_file) if points else None
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "generate":
        result = run_generate(args)
        print(json.dumps(result, indent=2) if args.json else format_generate(result))
    elif args.command == "predict":
        from .predictor import format_prediction

        result = run_predict(args)
        print(json.dumps(result, indent=2) if args.json else format_prediction(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
