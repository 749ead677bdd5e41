"""Load the public text data sets that hybridspec_lite trains and benchmarks on.

Two data sets are bundled under ``hybridspec_lite/resources/data/`` so that results are
reproducible offline (see the README.md there for sources, licences and checksums):

* GSM8K (Cobbe et al., 2021): grade-school math problems, 7,473 train and 1,319 test.
* WikiText-2 raw, test split (Merity et al., 2016).

Every loader takes ``source="bundled"`` (the default) or ``source="hub"``. The hub source
downloads the same data with the ``datasets`` library and needs network access.

GSM8K text format, used for training the tiny model zoo and for prompts::

    Question: <question>
    Answer: <answer>

A training document is one problem in this format (the answer keeps GSM8K's ``<<a*b=c>>``
calculator annotations and its final ``#### <number>`` line). ``gsm8k_text`` joins documents
with a blank line. A prompt is the same text cut after ``"Answer:"``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

__all__ = [
    "DATA_DIR",
    "DatasetUnavailableError",
    "format_gsm8k",
    "gsm8k_documents",
    "gsm8k_text",
    "load_gsm8k",
    "load_wikitext2_test",
    "prompts",
    "wikitext2_paragraphs",
]

DATA_DIR = Path(__file__).resolve().parent / "resources" / "data"
GSM8K_FILES = {"train": DATA_DIR / "gsm8k_train.jsonl", "test": DATA_DIR / "gsm8k_test.jsonl"}
WIKITEXT2_TEST_FILE = DATA_DIR / "wikitext2_test.raw"

GSM8K_HUB_ID = "openai/gsm8k"
WIKITEXT_HUB_ID = "wikitext"
WIKITEXT_HUB_CONFIG = "wikitext-2-raw-v1"

# Number of leading words kept from a WikiText-2 paragraph to form a prompt.
WIKITEXT_PROMPT_WORDS = 40

Split = Literal["train", "test"]
Source = Literal["bundled", "hub"]

_RESTORE_HINT = "Reinstall hybridspec_lite to restore the bundled file, or pass source='hub'."


class DatasetUnavailableError(RuntimeError):
    """Raised when ``source="hub"`` cannot load a data set from the Hugging Face Hub."""


def _check_split(split: str) -> None:
    if split not in GSM8K_FILES:
        raise ValueError(f"Invalid GSM8K split {split!r}. Expected 'train' or 'test'.")


def _check_source(source: str, path: str | Path | None) -> None:
    if source not in ("bundled", "hub"):
        raise ValueError(f"Invalid source {source!r}. Expected 'bundled' or 'hub'.")
    if source == "hub" and path is not None:
        raise ValueError("A path override applies only to source='bundled'.")


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Return the exception types that mean "the Hub is unreachable or lacks the data set"."""
    # huggingface_hub raises OSError subclasses for offline mode, HTTP and not-found errors,
    # but an unreachable host can surface as httpx.HTTPError, which is not one.
    # NOTE: the datasets errors were not exercised against a real Hub connection.
    errors: tuple[type[BaseException], ...] = (OSError,)
    try:
        import httpx
    except ImportError:
        return errors
    return (*errors, httpx.HTTPError)


def _load_from_hub(description: str, *args: str, **kwargs: str):
    """Call ``datasets.load_dataset(*args, **kwargs)`` and raise a clear error on failure."""
    fallback = "Use source='bundled' (the default) for the copy shipped with hybridspec_lite."
    try:
        import datasets
    except ImportError as error:
        raise DatasetUnavailableError(
            f"Loading {description} with source='hub' requires the 'datasets' package, "
            f"which is not installed (pip install datasets). {fallback}"
        ) from error
    try:
        return datasets.load_dataset(*args, **kwargs)
    except _hub_errors() as error:
        raise DatasetUnavailableError(
            f"Failed to load {description} from the Hugging Face Hub: {error}. {fallback}"
        ) from error


def _open_bundled(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}. {_RESTORE_HINT}")
    return path.read_text(encoding="utf-8")


def _parse_gsm8k_jsonl(path: Path) -> list[dict[str, str]]:
    problems = []
    for line_number, line in enumerate(_open_bundled(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"Malformed GSM8K file {path}, line {line_number}: invalid JSON ({error.msg}). "
                f"{_RESTORE_HINT}"
            ) from error
        if not isinstance(record, dict) or not all(
            isinstance(record.get(key), str) for key in ("question", "answer")
        ):
            raise ValueError(
                f"Malformed GSM8K file {path}, line {line_number}: expected a JSON object with "
                f"string fields 'question' and 'answer'. {_RESTORE_HINT}"
            )
        problems.append({"question": record["question"], "answer": record["answer"]})
    if not problems:
        raise ValueError(f"GSM8K file {path} contains no problems. {_RESTORE_HINT}")
    return problems


def load_gsm8k(
    split: Split = "train", source: Source = "bundled", path: str | Path | None = None
) -> list[dict[str, str]]:
    """Load one GSM8K split as a list of ``{"question": ..., "answer": ...}`` dicts.

    ``path`` replaces the bundled JSON Lines file (one object per line), for example to read
    a local copy. It applies only to ``source="bundled"``.
    """
    _check_split(split)
    _check_source(source, path)
    if source == "hub":
        dataset = _load_from_hub(f"GSM8K ({GSM8K_HUB_ID})", GSM8K_HUB_ID, "main", split=split)
        return [{"question": row["question"], "answer": row["answer"]} for row in dataset]
    return _parse_gsm8k_jsonl(Path(path) if path is not None else GSM8K_FILES[split])


def load_wikitext2_test(source: Source = "bundled", path: str | Path | None = None) -> str:
    """Load the WikiText-2 raw test split as one string with ``"\\n"`` line endings.

    The bundled file is the raw split byte for byte, which uses CRLF line endings. Reading it
    in text mode converts them to ``"\\n"``.
    """
    _check_source(source, path)
    if source == "hub":
        dataset = _load_from_hub(
            f"WikiText-2 ({WIKITEXT_HUB_ID}, {WIKITEXT_HUB_CONFIG})",
            WIKITEXT_HUB_ID,
            WIKITEXT_HUB_CONFIG,
            split="test",
        )
        # NOTE: the hub rows are the file's lines, so joining them should give the same
        # paragraphs. Whether whitespace-only lines match the bundled file is unverified.
        return "".join(dataset["text"])
    file_path = Path(path) if path is not None else WIKITEXT2_TEST_FILE
    text = _open_bundled(file_path)
    if not text.strip():
        raise ValueError(f"WikiText-2 file {file_path} is empty. {_RESTORE_HINT}")
    return text


def format_gsm8k(problem: dict[str, str], with_answer: bool = True) -> str:
    """Format one GSM8K problem as ``"Question: ...\\nAnswer: ..."``.

    With ``with_answer=False`` the text ends after ``"Answer:"``, which makes a prompt.
    """
    prompt = f"Question: {problem['question'].strip()}\nAnswer:"
    if not with_answer:
        return prompt
    return f"{prompt} {problem['answer'].strip()}"


def gsm8k_documents(split: Split = "train", source: Source = "bundled") -> list[str]:
    """Return the problems of one GSM8K split formatted by ``format_gsm8k``, in file order."""
    return [format_gsm8k(problem) for problem in load_gsm8k(split, source=source)]


def gsm8k_text(split: Split = "train", source: Source = "bundled") -> str:
    """Return one GSM8K split as training text: documents joined by a blank line."""
    return "\n\n".join(gsm8k_documents(split, source=source)) + "\n"


def wikitext2_paragraphs(source: Source = "bundled") -> list[str]:
    """Return the non-empty WikiText-2 test paragraphs that are not ``= Heading =`` lines."""
    paragraphs = []
    for line in load_wikitext2_test(source=source).split("\n"):
        stripped = line.strip()
        if stripped and not (stripped.startswith("=") and stripped.endswith("=")):
            paragraphs.append(stripped)
    return paragraphs


def prompts(
    dataset: Literal["gsm8k", "wikitext"] = "gsm8k",
    n: int = 8,
    seed: int = 0,
    source: Source = "bundled",
) -> list[str]:
    """Return ``n`` prompts drawn without replacement from a test split.

    The draw uses ``random.Random(seed)``, so equal arguments give equal prompts.

    * ``"gsm8k"``: ``"Question: <question>\\nAnswer:"`` for ``n`` GSM8K test problems.
    * ``"wikitext"``: the first 40 words of ``n`` WikiText-2 test paragraphs (headings and
      empty lines excluded), joined by single spaces.
    """
    if dataset == "gsm8k":
        candidates = [format_gsm8k(p, with_answer=False) for p in load_gsm8k("test", source)]
    elif dataset == "wikitext":
        candidates = [
            " ".join(paragraph.split()[:WIKITEXT_PROMPT_WORDS])
            for paragraph in wikitext2_paragraphs(source=source)
        ]
    else:
        raise ValueError(f"Invalid dataset {dataset!r}. Expected 'gsm8k' or 'wikitext'.")

    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(candidates):
        raise ValueError(
            f"Invalid prompt count n={n!r}. Expected an integer from 0 to {len(candidates)} "
            f"for {dataset!r}."
        )
    indices = random.Random(seed).sample(range(len(candidates)), n)
    return [candidates[index] for index in indices]
