"""A results store for notebook compute cells: JSON results keyed by a hash of their parameters.

``cached(name, params, compute)`` runs ``compute()`` only when no finished result exists for
``params``. The key is the SHA-256 of the canonical JSON of ``params`` together with the
package version, so a new release recomputes everything and equal parameters always find
the same file. A result is written to a temporary file in its final directory and moved
into place with ``os.replace``, so a file under its final name is always complete. A run
killed in the middle of a sweep loses only the unit it was computing.

Layout under the results root (default ``<repository>/results``, see ``default_root``)::

    cache/<name>/<key>.json            one finished unit: parameters, version, result
    figures/<notebook>/<figure>.png    figures that notebook figure cells save

The module also contains the figure side of the notebooks: the shared plot style and
``save_figure``, so that every chapter looks the same and writes figures to one place.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm import tqdm

from . import __version__

logger = logging.getLogger(__name__)

# Overrides the default results root, for example to run the notebooks on an empty cache.
ROOT_ENVIRONMENT_VARIABLE = "HYBRIDSPEC_RESULTS"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def find_repository_root(start: str | Path | None = None) -> Path | None:
    """Return the nearest directory at or above ``start`` (default: cwd) that contains this project.

    The project is recognised by a ``hybridspec_lite`` package directory next to a
    ``pyproject.toml``. Returns None outside a checkout, for example with an installed wheel.
    """
    here = Path(start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / "pyproject.toml").is_file() and (directory / "hybridspec_lite").is_dir():
            return directory
    return None


def default_root() -> Path:
    """Return the results root: $HYBRIDSPEC_RESULTS, else ``<repository>/results``, else ``./results``."""
    override = os.environ.get(ROOT_ENVIRONMENT_VARIABLE)
    if override:
        return Path(override).resolve()
    repository = find_repository_root()
    return (repository or Path.cwd()) / "results"


def _root(root: str | Path | None) -> Path:
    return Path(root) if root is not None else default_root()


def canonical_json(params: dict) -> str:
    """Serialise ``params`` with sorted keys and no whitespace; raise TypeError if not JSON data.

    Numbers keep their JSON type, so ``1`` and ``1.0`` are different parameters.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of JSON values, got {type(params).__name__}")
    try:
        return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"params are not plain JSON data ({error}); pass str, int, float, bool, None, lists and dicts only"
        ) from error


def params_key(params: dict, version: str = __version__) -> str:
    """Return the hex SHA-256 of the canonical JSON of ``params`` and the package ``version``."""
    payload = canonical_json({"params": params, "version": version})
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def result_path(name: str, params: dict, root: str | Path | None = None) -> Path:
    """Return the path of the result file of ``params`` under ``name``, which may not exist yet."""
    if not _NAME_PATTERN.match(name):
        raise ValueError(f"invalid result name {name!r}: use letters, digits, '.', '_' and '-' only")
    return _root(root) / "cache" / name / f"{params_key(params)}.json"


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same directory.

    ``os.replace`` moves the finished file into place, so ``path`` never contains a partial
    document. When serialisation or writing fails, the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            json.dump(data, handle, indent=1, sort_keys=True, allow_nan=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        # Atomic writes never leave a partial file, so this is a file edited by hand.
        logger.warning("ignoring unreadable result file %s (%s); recomputing it", path, error)
        return None
    if not isinstance(record, dict) or "result" not in record:
        logger.warning("ignoring result file %s without a 'result' entry; recomputing it", path)
        return None
    return record


def load(name: str, params: dict, root: str | Path | None = None) -> Any:
    """Return the finished result of ``params`` under ``name``; raise FileNotFoundError if none exists."""
    path = result_path(name, params, root)
    record = _read_record(path)
    if record is None:
        raise FileNotFoundError(
            f"no finished {name!r} result at {path} for params {canonical_json(params)}; "
            "run the notebook's compute cells first"
        )
    return record["result"]


def cached(name: str, params: dict, compute: Callable[[], Any], root: str | Path | None = None) -> Any:
    """Return the stored result of ``params`` under ``name``, running ``compute()`` only if none exists.

    The result must be JSON data. What this returns is always the stored JSON read back,
    so a first run and a re-run return equal values (tuples come back as lists).
    """
    path = result_path(name, params, root)
    record = _read_record(path)
    if record is not None:
        logger.debug("reusing %s", path)
        return record["result"]

    logger.info("computing %s %s", name, canonical_json(params))
    result = compute()
    record = {
        "name": name,
        "params": params,
        "version": __version__,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "result": result,
    }
    write_json_atomic(path, record)
    return _read_record(path)["result"]


def sweep(
    name: str,
    units: Iterable[dict],
    compute: Callable[[dict], Any],
    root: str | Path | None = None,
    progress: bool = True,
    description: str | None = None,
) -> list[Any]:
    """Run ``compute(params)`` for every unit through ``cached``; return the results in order.

    Each unit is stored as soon as it finishes, so an interrupted sweep resumes at the
    first unit without a result. The progress bar goes to stderr.
    """
    units = list(units)
    results = []
    bar = tqdm(units, desc=description or name, unit="unit", disable=not progress, leave=False)
    for params in bar:
        results.append(cached(name, params, lambda params=params: compute(params), root))
    bar.close()
    return results


# ---------------------------------------------------------------------------------------
# Figures


# One look for every chapter: seaborn's whitegrid theme with a colour-blind safe palette,
# and rcParams sized for a book page (figures 6.4 x 3.6 inches at 150 dpi when saved).
PLOT_RC = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "figure.titlesize": 12,
    "errorbar.capsize": 3,
    "lines.markersize": 5,
}


# One colour per model family in every figure (seaborn's "colorblind" palette).
FAMILY_COLORS = {"falcon-h1": "#0173b2", "qwen3.5": "#de8f05", "qwen2": "#029e73"}
# The study's reported values: black-edged stars, never a line.
STUDY_MARKER = {"marker": "*", "s": 150, "edgecolor": "black", "linewidth": 0.8, "zorder": 5}


def apply_plot_style() -> None:
    """Apply the shared plot style of the companion notebooks (seaborn and matplotlib)."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", rc=PLOT_RC)


def save_figure(fig, notebook: str, figure: str, root: str | Path | None = None) -> Path:
    """Save ``fig`` as ``figures/<notebook>/<figure>.png`` under the results root; return the path."""
    for label, value in (("notebook", notebook), ("figure", figure)):
        if not _NAME_PATTERN.match(value):
            raise ValueError(f"invalid {label} name {value!r}: use letters, digits, '.', '_' and '-' only")
    path = _root(root) / "figures" / notebook / f"{figure}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def display_path(path: str | Path) -> str:
    """Return ``path`` relative to the repository root when it lies inside it, for printing."""
    path = Path(path).resolve()
    repository = find_repository_root()
    if repository is not None and path.is_relative_to(repository):
        return str(path.relative_to(repository))
    return str(path)
