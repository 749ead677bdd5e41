"""Generate the book's benchmark page and its figures from the benchmark results.

Reads benchmarks/results/batch.json and speed.json (and versions.json when present), and
writes book/benchmarks.md with PNG figures under book/figures/benchmarks/. It only reads
results; rerun the bench_*.py scripts to measure again.

    python benchmarks/make_page.py
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from common import REPOSITORY, RESULTS_DIR

logger = logging.getLogger("benchmarks.page")

PAGE = REPOSITORY / "book" / "benchmarks.md"
FIGURES = REPOSITORY / "book" / "figures" / "benchmarks"
PHASE_ORDER = ("draft", "verify", "accept", "rollback", "overhead")


def load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def short(name: str) -> str:
    return name.removeprefix("tiny/")


def family_of(name: str) -> str:
    return short(name).rsplit("-", 1)[0]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------
# Figures: they only read results and log the path they save to
# ---------------------------------------------------------------------------------------


def plot_throughput(batch: dict) -> Path:
    import matplotlib.pyplot as plt

    from hybridspec_lite.results import FAMILY_COLORS

    fig, ax = plt.subplots(figsize=(7.6, 3.8))
    for model in batch["models"]:
        name = model["model"]
        for method, style in (("plain", ":"), ("speculative", "-")):
            rows = sorted((r for r in model["results"] if r["method"] == method), key=lambda r: r["batch_size"])
            ax.plot(
                [r["batch_size"] for r in rows],
                [r["tokens_per_second"] for r in rows],
                linestyle=style,
                marker="o" if name.endswith("-s") else "s",
                color=FAMILY_COLORS.get(family_of(name)),
                label=f"{short(name)} {method}",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({r["batch_size"] for m in batch["models"] for r in m["results"]})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("generated tokens per second")
    ax.set_title("Throughput (solid: speculative, dotted: plain)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    path = FIGURES / "throughput.png"
    fig.savefig(path)
    plt.close(fig)
    logger.info("saved %s", path)
    return path


def plot_profile(speed: dict) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    models = speed["models"]
    names = [short(m["model"]) for m in models]
    left = [0.0] * len(models)
    for phase in PHASE_ORDER:
        values = [1000 * m["profile_seconds_per_round"][phase] for m in models]
        ax.barh(names, values, left=left, label=phase)
        left = [a + b for a, b in zip(left, values)]
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds per round")
    ax.set_title(f"One speculative round at batch size 1, k = {speed['settings']['k']}")
    ax.legend(ncol=len(PHASE_ORDER), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, -0.35))
    path = FIGURES / "round_profile.png"
    fig.savefig(path)
    plt.close(fig)
    logger.info("saved %s", path)
    return path


# ---------------------------------------------------------------------------------------
# Page sections
# ---------------------------------------------------------------------------------------


def setup_section(batch: dict | None, speed: dict | None, versions: dict | None) -> str:
    source = speed or batch
    machine = source["machine"]
    lines = [
        "## Set-up",
        "",
        table(
            ["", "value"],
            [
                ["CPU", f"{machine['cpu']} ({machine['cpu_count']} logical cores)"],
                ["device", machine["device"] + (f" ({machine['gpu']})" if "gpu" in machine else "")],
                ["torch threads", str(machine["torch_threads"])],
                ["dtype", machine["dtype"]],
                ["software", f"Python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}"],
            ],
        ),
        "",
        "Every script follows the same timing rules. Each variant runs once untimed. Then, in "
        "each repeat, every variant of a model decodes prompt (or batch) i before any decodes "
        "prompt i + 1, in a shuffled order, so that load from other processes and the state "
        "one run leaves for the next fall on all variants alike. Figures are medians over the repeats, and every "
        "comparison is a ratio of medians from the same run: a slower or busier machine shifts "
        "the absolute numbers much more than the ratios. Decoding is greedy, prompts are GSM8K "
        "test questions (`hybridspec_lite.data.prompts('gsm8k', n, seed=0)`), and the "
        "tokenizer's end-of-text token ends a row. The scripts assert that speculative decoding "
        "and transformers' `generate()` emit the same tokens as `plain_generate`.",
        "",
    ]
    runs = []
    if batch:
        s = batch["settings"]
        runs.append(
            [
                "`python benchmarks/bench_batch.py`",
                str(s["prompts"]),
                str(s["max_new_tokens"]),
                str(s["k"]),
                str(s["repeats"]),
                s["weights"],
            ]
        )
    if speed:
        s = speed["settings"]
        runs.append(
            [
                "`python benchmarks/bench_speed.py`",
                str(s["prompts"]),
                str(s["max_new_tokens"]),
                str(s["k"]),
                f"{s['repeats']} (steps: {s['step_repeats']}, profile: {s['profile_repeats']})",
                s["weights"],
            ]
        )
    if versions:
        s = versions["settings"]
        runs.append(
            [
                "`python benchmarks/bench_versions.py --baseline DIR`",
                str(s["prompts"]),
                str(s["max_new_tokens"]),
                str(s["k"]),
                f"{s['repeats']} (profile: {s['profile_repeats']})",
                s["weights"],
            ]
        )
    lines += [table(["script", "prompts", "max new tokens", "k", "repeats", "weights"], runs), ""]
    return "\n".join(lines)


def batch_section(batch: dict, figure: Path) -> str:
    rows, growth = [], []
    for model in batch["models"]:
        by_key = {(r["method"], r["batch_size"]): r for r in model["results"]}
        sizes = sorted({r["batch_size"] for r in model["results"]})
        for size in sizes:
            plain, spec = by_key[("plain", size)], by_key[("speculative", size)]
            rows.append(
                [
                    short(model["model"]),
                    model["draft"],
                    str(size),
                    f"{plain['tokens_per_second']:.0f}",
                    f"{spec['tokens_per_second']:.0f}",
                    f"{spec['speedup_vs_plain']:.2f}",
                    fmt(spec["alpha"], 3),
                ]
            )
        largest = sizes[-1]
        growth.append(
            (
                by_key[("plain", largest)]["throughput_vs_smallest_batch"],
                by_key[("speculative", largest)]["throughput_vs_smallest_batch"],
            )
        )
    sizes = sorted({r["batch_size"] for m in batch["models"] for r in m["results"]})
    plain_growth = [g[0] for g in growth]
    spec_growth = [g[1] for g in growth]
    speedups = [r["speedup_vs_plain"] for m in batch["models"] for r in m["results"] if r["method"] == "speculative"]
    if max(speedups) < 1:
        verdict = (
            f"Speculative decoding is slower than plain decoding in every row (speedup {min(speedups):.2f} "
            f"to {max(speedups):.2f}): see the next section for why."
        )
    else:
        verdict = f"The speedup of speculative decoding ranges from {min(speedups):.2f} to {max(speedups):.2f}."
    return "\n".join(
        [
            "## Throughput and batch size",
            "",
            f"Generated tokens per second over the same {batch['settings']['prompts']} prompts, decoded in "
            f"batches of {', '.join(map(str, sizes))} (`bench_batch.py`). The speculative draft is the "
            "component draft with shared state for the hybrids and the early-exit draft at half depth "
            f"for Qwen2, with k = {batch['settings']['k']}. Speedup is speculative over plain tokens per "
            "second at the same batch size; alpha is the acceptance rate of that run.",
            "",
            table(["model", "draft", "batch", "plain tokens/s", "speculative tokens/s", "speedup", "alpha"], rows),
            "",
            f"From batch size {sizes[0]} to {sizes[-1]}, plain throughput grows by a factor of "
            f"{min(plain_growth):.1f} to {max(plain_growth):.1f} across the {len(growth)} models and speculative "
            f"throughput by {min(spec_growth):.1f} to {max(spec_growth):.1f}. Rows of one batch stop "
            "at their own end-of-text token, but a batch runs until its longest row ends, so larger "
            f"batches also carry finished rows. {verdict}",
            "",
            f"```{{figure}} {figure.relative_to(PAGE.parent).as_posix()}",
            ":name: fig-benchmarks-throughput",
            "",
            "Tokens per second against batch size, both axes logarithmic. Circles: small models; squares: large models.",
            "```",
            "",
        ]
    )


def ideal_section(speed: dict) -> str:
    rows = []
    for model in speed["models"]:
        s, costs = model["summary"], model["step_costs"]
        rows.append(
            [
                short(model["model"]),
                model["draft"],
                fmt(s["alpha"], 3),
                fmt(s["cost_ratio"], 3),
                fmt(costs["verify_block_vs_step"]),
                fmt(s["ideal_speedup"]),
                fmt(s["ideal_speedup_with_measured_verify"]),
                fmt(s["measured_speedup"]),
                fmt(s["measured_over_ideal"]),
            ]
        )
    k = speed["settings"]["k"]
    ratios = [m["summary"]["measured_over_ideal"] for m in speed["models"]]
    ideals = [m["summary"]["ideal_speedup"] for m in speed["models"]]
    if max(ideals) < 1:
        prediction = (
            f"With these acceptance rates and cost ratios the formula itself predicts a slowdown "
            f"(ideal S from {min(ideals):.2f} to {max(ideals):.2f}): a draft step costs "
            f"{min(m['summary']['cost_ratio'] for m in speed['models']):.2f} to "
            f"{max(m['summary']['cost_ratio'] for m in speed['models']):.2f} of a target step, so "
            "the draft needs a higher alpha than these tiny models reach."
        )
    else:
        prediction = f"The ideal S ranges from {min(ideals):.2f} to {max(ideals):.2f}."
    return "\n".join(
        [
            "## Measured against ideal speedup",
            "",
            "The ideal speedup of Leviathan et al. (2023) is "
            "S = (1 − α<sup>k+1</sup>) / ((1 − α)(k c + 1)), where c is the time of one draft step "
            "over the time of one target decode step. `bench_speed.py` times both directly: single "
            "forwards of one token on the same cache, interleaved, each rolled back before the next, "
            f"{speed['settings']['step_repeats']} of each. The measured speedup is the median time of "
            "`plain_generate` over that of `speculative_generate` on the same prompts, one prompt at "
            f"a time, with k = {k}.",
            "",
            table(
                ["model", "draft", "alpha", "c", "verify / step", "ideal S", "S, measured verify", "measured S",
                 "measured / ideal"],
                rows,
            ),
            "",
            f"Measured over ideal ranges from {min(ratios):.2f} to {max(ratios):.2f}. {prediction}",
            "",
            "The formula charges one verification as one decode step. The column verify / step is the "
            f"measured time of one verification forward of k + 1 = {k + 1} tokens over one decode step, "
            "and the column S, measured verify puts that cost in the denominator: "
            "(1 − α<sup>k+1</sup>) / ((1 − α)(k c + verify / step)). For the hybrids, transformers "
            "runs a verification with past-state recording on: it steps the Mamba-2 or Gated "
            "DeltaNet recurrence one token at a time to keep every intermediate state for the "
            "rollback, after a chunked scan over zero tokens. The measured speedup can exceed that "
            "second estimate because a plain decode step in `plain_generate` also carries one host "
            "transfer and the per-token bookkeeping, which a round shares among all its tokens.",
            "",
        ]
    )


def transformers_section(speed: dict) -> str:
    rows, notes = [], []
    for model in speed["models"]:
        tps, s = model["tokens_per_second"], model["summary"]
        assisted = "transformers_assisted" if "transformers_assisted" in tps else "transformers_early_exit"
        identical = model["identical_to_plain"].get(assisted)
        rows.append(
            [
                short(model["model"]),
                f"{tps['ours_plain']:.0f}",
                f"{tps['transformers_generate']:.0f}",
                fmt(s["transformers_generate_over_ours_plain"]),
                f"{tps['ours_speculative']:.0f}",
                f"{tps[assisted]:.0f}" if assisted in tps else "failed",
                fmt(s.get(f"{assisted}_over_ours_speculative")),
                f"{identical['prompts_identical']} / {identical['prompts']}" if identical else "n/a",
            ]
        )
        for variant, message in model["errors"].items():
            notes.append(f"- {short(model['model'])}, `{variant}`: `{message}`")
    text = [
        "## Against transformers",
        "",
        "The same models and prompts through transformers' own decoding, one prompt at a time. "
        "`generate()` is plain greedy `model.generate()`. For the hybrids the assisted path is "
        "`model.generate(assistant_model=twin)`, where `twin` is a second instance of the same "
        "class that shares every weight tensor (loaded with `load_state_dict(..., assign=True)`) "
        "and has its attention removed for good by the adapter: what a user can build today "
        "without this library. For Qwen2 it is `model.generate(assistant_early_exit=E)` at the "
        "same exit layer as our early-exit draft. Both assisted paths draft exactly k tokens per "
        "round (`num_assistant_tokens=k`, constant schedule, `assistant_confidence_threshold=0`). "
        "Ratios are transformers' median time over ours, so above 1 means ours is faster.",
        "",
        table(
            [
                "model",
                "ours plain tokens/s",
                "generate() tokens/s",
                "generate() / ours",
                "ours speculative tokens/s",
                "assisted tokens/s",
                "assisted / ours",
                "assisted prompts identical",
            ],
            rows,
        ),
        "",
        "Ours and `generate()` emit the same tokens as `plain_generate` on every prompt; the script "
        "asserts it. The last column counts the prompts on which the assisted path does too. In "
        "transformers 5.25 it can drift on the hybrids: assisted decoding records as many past "
        "recurrent states on the target's cache as it drafts tokens (`num_assistant_tokens`), "
        "but verifies one token more. When every candidate of a round is rejected, the crop "
        "restores the Mamba-2 or Gated DeltaNet state from one token too early, and the output "
        "leaves greedy decoding from there. The assisted throughput counts the tokens it emitted.",
        "",
    ]
    if notes:
        text += ["Paths that raised, with their messages:", "", *notes, ""]
    return "\n".join(text)


def profile_section(speed: dict, figure: Path) -> str:
    rows = []
    for model in speed["models"]:
        p = model["profile_seconds_per_round"]
        rows.append(
            [short(model["model"])]
            + [f"{1000 * p[phase]:.2f}" for phase in (*PHASE_ORDER, "round")]
            + [f"{100 * p['rollback'] / p['verify']:.1f}"]
        )
    return "\n".join(
        [
            "## Where a round spends its time",
            "",
            "Milliseconds per round at batch size 1, from a separate profiled run "
            "(`benchmarks/round_profile.py` wraps each phase with a timer; the timed runs above carry "
            "no instrumentation). Draft covers the k draft forwards; verify the one target forward; "
            "accept the acceptance decision, its single transfer to the host and the per-row "
            "bookkeeping; rollback the target's and the draft's rollback and cache compaction; "
            "overhead whatever the loop spends outside those phases.",
            "",
            table(["model", *PHASE_ORDER, "round", "rollback / verify (%)"], rows),
            "",
            f"```{{figure}} {figure.relative_to(PAGE.parent).as_posix()}",
            ":name: fig-benchmarks-round-profile",
            "",
            "Milliseconds per speculative round by phase.",
            "```",
            "",
        ]
    )


def versions_section(versions: dict) -> str:
    rows, profile_rows = [], []
    for model in versions["models"]:
        for r in model["results"]:
            rows.append(
                [short(model["model"]), str(r["batch_size"]), r["method"], f"{r['baseline_over_current']:.2f}"]
            )
        profile = model["profile_seconds_per_round"]
        profile_rows.append(
            [short(model["model"])]
            + [
                f"{1000 * profile['baseline'][phase]:.2f} → {1000 * profile['current'][phase]:.2f}"
                for phase in ("rollback", "accept", "overhead", "round")
            ]
        )
    s = versions["settings"]
    ratios = [r["baseline_over_current"] for m in versions["models"] for r in m["results"]]
    saved = []
    for model in versions["models"]:
        before, after = model["profile_seconds_per_round"]["baseline"], model["profile_seconds_per_round"]["current"]
        loop = ("accept", "rollback", "overhead")
        saved.append(sum(before[x] - after[x] for x in loop) / before["round"])
    summary = (
        f"The end-to-end ratios scatter from {min(ratios):.2f} to {max(ratios):.2f}. The loop phases "
        f"(accept, rollback, overhead) of the current version take {100 * min(saved):.1f} to "
        f"{100 * max(saved):.1f} percent of a round less than before, a saving smaller than the "
        "run-to-run scatter of these short runs on a shared machine, so the end-to-end ratios "
        "do not resolve it; the per-round profile does. The attention-mask change acts inside "
        "the draft and verify forwards, outside those three columns."
    )
    return "\n".join(
        [
            "## Before and after the loop optimisations",
            "",
            "`bench_versions.py` times an earlier copy of the package against the current one, "
            "interleaved batch by batch in one process on the same model objects "
            f"({s['prompts']} prompts, {s['max_new_tokens']} new tokens, k = {s['k']}, "
            f"{s['repeats']} repeats). The earlier copy is {s['baseline']}. The ratio is the earlier "
            "version's median time over the "
            "current one's, so above 1 means the current one is faster. The current version "
            "changes the loop, not the model forward:",
            "",
            "- a rollback that removes the same count from every row (always at batch size 1, "
            "and always for the draft's own rollback) takes the recorded recurrent state and a "
            "slice of the conv window, where the earlier one stacked the history and gathered;",
            "- rollback counts and lengths stay on the host, so rollback and the compaction "
            "decision read nothing back from the device (the earlier rollback read the counts "
            "back once per call and once per recurrent layer, and compaction once per round);",
            "- the acceptance decision crosses to the host in one transfer instead of three;",
            "- a forward whose attention mask would be all ones (no padding, no holes) gets no "
            "mask, so transformers builds its causal mask without checking a 2D mask;",
            "- on CUDA the phase timers are events read at the end of the run instead of a device "
            "synchronisation at every phase boundary.",
            "",
            table(["model", "batch", "method", "earlier / current"], rows),
            "",
            "Milliseconds per round at batch size 1, earlier → current, from profiled runs:",
            "",
            table(["model", "rollback", "accept", "overhead", "whole round"], profile_rows),
            "",
            summary,
            "",
        ]
    )


def limits_section(speed: dict | None) -> str:
    costs = [m["summary"]["cost_ratio"] for m in speed["models"]] if speed else []
    measured_c = f" (measured here: {min(costs):.2f} to {max(costs):.2f})" if costs else ""
    return "\n".join(
        [
            "## Limits",
            "",
            "- These are tiny models on a CPU with one thread. A forward pass costs a few "
            "milliseconds, much of it Python and per-operator overhead rather than arithmetic. "
            "The component draft still runs every Mamba-2 or Gated DeltaNet mixer with its layer's "
            f"MLP, and attention over a short context is cheap, so the cost ratio c stays high{measured_c}. "
            "These figures say nothing about c on larger models or on a GPU.",
            "- On a CPU, transformers 5.25 runs the reference PyTorch versions of the Mamba-2, "
            "causal-conv and Gated DeltaNet kernels (it logs this once per kernel). The kernels of "
            "`mamba_ssm`, `causal_conv1d` and `flash-linear-attention` on a GPU are not measured here.",
            "- The batch benchmark counts only emitted tokens, and a batch keeps running its finished "
            "rows until its last row ends.",
            "",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="directory of the benchmark JSON files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    batch = load(args.results / "batch.json")
    speed = load(args.results / "speed.json")
    versions = load(args.results / "versions.json")
    if batch is None and speed is None:
        raise SystemExit(f"error: neither batch.json nor speed.json found in {args.results}; run the benchmarks first")

    from hybridspec_lite.results import apply_plot_style

    apply_plot_style()
    FIGURES.mkdir(parents=True, exist_ok=True)
    sections = [
        "# Benchmarks",
        "",
        "Speed of `speculative_generate` against `plain_generate` and against transformers' own "
        "decoding paths on the six tiny zoo models. This page is generated by "
        "`python benchmarks/make_page.py` from `benchmarks/results/*.json`, which the scripts in "
        "`benchmarks/` write; edit the scripts, not this page.",
        "",
        setup_section(batch, speed, versions),
    ]
    if batch:
        sections.append(batch_section(batch, plot_throughput(batch)))
    if speed:
        sections += [ideal_section(speed), transformers_section(speed), profile_section(speed, plot_profile(speed))]
    if versions:
        sections.append(versions_section(versions))
    sections.append(limits_section(speed))
    PAGE.write_text("\n".join(sections).rstrip() + "\n")
    logger.info("wrote %s", PAGE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
