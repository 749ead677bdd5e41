"""Write executed smoke copies of every notebook to _build/nbval/ for nbval to re-run.

Each notebook runs through papermill at its smallest parameters (``SMOKE_PARAMETERS`` of
build_book.py), on an empty results cache, so the copies hold reference outputs. Then

    python -m pytest --nbval-lax _build/nbval

re-executes every copy and compares the outputs of the cells marked ``# NBVAL_CHECK_OUTPUT``
(the rounded headline numbers); other cells only have to run without error. A conftest.py
written next to the copies points that re-run at a second empty cache, so every number is
computed again rather than read back from the first run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_book import REPOSITORY, SMOKE_PARAMETERS, notebooks, prepare_environment, run_notebooks  # noqa: E402

NBVAL_DIR = REPOSITORY / "_build" / "nbval"

CONFTEST = '''"""Written by scripts/nbval_smoke.py: the nbval re-run computes into its own empty cache."""

import os
import shutil
from pathlib import Path

CACHE = Path(__file__).resolve().parent / "results-check"
shutil.rmtree(CACHE, ignore_errors=True)
# The notebook kernels inherit these variables when nbval starts them.
os.environ["HYBRIDSPEC_RESULTS"] = str(CACHE)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The inline backend of ipykernel draws the figures; MPLBACKEND would replace it.
os.environ.pop("MPLBACKEND", None)
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)

    prepare_environment()
    selected = notebooks()
    missing = [n.stem for n in selected if n.stem not in SMOKE_PARAMETERS]
    if missing:
        raise SystemExit(f"error: no smoke parameters for {missing}; add them to SMOKE_PARAMETERS in scripts/build_book.py")

    shutil.rmtree(NBVAL_DIR, ignore_errors=True)
    NBVAL_DIR.mkdir(parents=True)
    os.environ["HYBRIDSPEC_RESULTS"] = str(NBVAL_DIR / "results-prepare")
    (NBVAL_DIR / "conftest.py").write_text(CONFTEST, encoding="utf-8")

    start = time.perf_counter()
    for name, seconds in run_notebooks(selected, NBVAL_DIR, smoke=True):
        print(f"{name}: {seconds:.0f} s")
    print(f"smoke copies in {NBVAL_DIR.relative_to(REPOSITORY)}, {time.perf_counter() - start:.0f} s")
    print(f"next: python -m pytest --nbval-lax {NBVAL_DIR.relative_to(REPOSITORY)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
