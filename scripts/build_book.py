"""Run every companion notebook through papermill, then build the Jupyter Book into _build/html.

The committed notebooks in notebooks/ stay without outputs. Their executed copies go to
book/generated/, which _toc.yml points at, and the book is built with execution off.
Measurements are cached under results/ (see hybridspec_lite.results), so a second build
only re-reads them.

    python scripts/build_book.py            # default parameters: the tiny models, minutes
    python scripts/build_book.py --smoke    # the smallest parameters, for a quick check
    python scripts/build_book.py --notebooks-only

Exits non-zero when a notebook or the book build fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPOSITORY / "notebooks"
GENERATED_DIR = REPOSITORY / "book" / "generated"
BUILD_DIR = REPOSITORY / "_build"

# The smallest parameters that still run every cell and fill every glued number of the
# prose, so that a smoke build passes the same warning-free book build.
SMOKE_PARAMETERS = {
    "01_acceptance_vs_k": dict(KS=[2, 4], N_PROMPTS=3, MAX_NEW_TOKENS=8, N_BOOT=200),
    "02_ppl_to_alpha": dict(
        SIZES=["s"], N_PROMPTS=3, MAX_NEW_TOKENS=8, N_CHUNKS=2, CHUNK_TOKENS=128, WINDOW=64, STRIDE=32,
        RANDOM_SEEDS=[0], DIVERGENCE_DOCUMENTS=2, DIVERGENCE_TOKENS=64, N_BOOT=200,
    ),
    "03_scale": dict(KS=[2], N_PROMPTS=3, MAX_NEW_TOKENS=8, N_CHUNKS=2, CHUNK_TOKENS=128, WINDOW=64, STRIDE=32, N_BOOT=200),
    "04_layerskip": dict(SIZE="s", N_PROMPTS=3, MAX_NEW_TOKENS=8, DIVERGENCE_DOCUMENTS=2, DIVERGENCE_TOKENS=64, N_BOOT=200),
    "05_sampling": dict(N_PROMPTS=3, MAX_NEW_TOKENS=8, DIVERGENCE_DOCUMENTS=2, DIVERGENCE_TOKENS=64, N_BOOT=200),
}


def notebooks() -> list[Path]:
    """Return the committed notebooks in chapter order."""
    found = sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
    if not found:
        raise SystemExit(f"error: no notebooks found in {NOTEBOOK_DIR}")
    return found


def prepare_environment() -> None:
    """Set the variables that the papermill kernels inherit: one torch thread, no Hub access."""
    # Tiny models run fastest on one thread, and the build shares its machine.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # ipykernel's inline backend draws the figures into the notebooks; a backend chosen
    # through MPLBACKEND (Agg, for example) would leave the executed copies without figures.
    os.environ.pop("MPLBACKEND", None)


def execute(notebook: Path, output: Path, parameters: dict, timeout: int | None = None) -> None:
    """Execute ``notebook`` with papermill into ``output``; the kernel starts in the repository root."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(REPOSITORY),
        progress_bar=False,
        execution_timeout=timeout,
    )


def run_notebooks(selected: list[Path], output_dir: Path, smoke: bool) -> list[tuple[str, float]]:
    """Execute each notebook under a tqdm bar; return (name, seconds) per notebook.

    Raises SystemExit naming the notebook that failed; its partly executed copy stays in
    ``output_dir`` for inspection.
    """
    import papermill
    from tqdm import tqdm

    timings = []
    bar = tqdm(selected, desc="notebooks", unit="notebook")
    for notebook in bar:
        bar.set_postfix_str(notebook.stem)
        parameters = SMOKE_PARAMETERS.get(notebook.stem, {}) if smoke else {}
        start = time.perf_counter()
        try:
            execute(notebook, output_dir / notebook.name, parameters)
        except papermill.PapermillExecutionError as error:
            bar.close()
            raise SystemExit(
                f"error: {notebook.name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                f"the executed copy is {output_dir / notebook.name}"
            ) from None
        timings.append((notebook.stem, time.perf_counter() - start))
    bar.close()
    return timings


def build_book(strict: bool = True) -> None:
    """Run ``jupyter-book build .`` into _build/html; raise SystemExit when it fails."""
    executable = Path(sys.executable).with_name("jupyter-book")
    command = [str(executable) if executable.exists() else "jupyter-book", "build", str(REPOSITORY), "--all"]
    if strict:
        # A glued number missing from its notebook is a warning: fail on it.
        command += ["-W", "--keep-going"]
    result = subprocess.run(command, cwd=REPOSITORY)
    if result.returncode != 0:
        raise SystemExit(f"error: jupyter-book build failed with exit status {result.returncode}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="run each notebook at its smallest parameters")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this notebook (stem, e.g. 03_scale); repeatable")
    parser.add_argument("--notebooks-only", action="store_true", help="execute the notebooks but do not build the book")
    parser.add_argument("--book-only", action="store_true", help="build the book from the executed copies in book/generated")
    parser.add_argument("--no-strict", action="store_true", help="do not turn Sphinx warnings into errors")
    arguments = parser.parse_args(argv)

    prepare_environment()
    selected = notebooks()
    if arguments.only:
        unknown = set(arguments.only) - {n.stem for n in selected}
        if unknown:
            parser.error(f"unknown notebook(s) {sorted(unknown)}; choose from {[n.stem for n in selected]}")
        selected = [n for n in selected if n.stem in arguments.only]

    start = time.perf_counter()
    if not arguments.book_only:
        for name, seconds in run_notebooks(selected, GENERATED_DIR, arguments.smoke):
            print(f"{name}: {seconds:.0f} s")
    if not arguments.notebooks_only:
        missing = [n.name for n in notebooks() if not (GENERATED_DIR / n.name).is_file()]
        if missing:
            raise SystemExit(f"error: executed copies missing in {GENERATED_DIR}: {missing}; run without --book-only first")
        if (BUILD_DIR / "html").exists():
            shutil.rmtree(BUILD_DIR / "html")
        build_book(strict=not arguments.no_strict)
        print(f"book: {BUILD_DIR / 'html' / 'index.html'}")
    print(f"total: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
