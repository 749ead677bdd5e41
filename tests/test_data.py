import hashlib
import sys

import pytest

from hybridspec_lite import data

BUNDLED_SHA256 = {
    "gsm8k_train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "gsm8k_test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "wikitext2_test.raw": "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c",
}


@pytest.mark.parametrize("file_name", sorted(BUNDLED_SHA256))
def test_bundled_file_checksum(file_name):
    digest = hashlib.sha256((data.DATA_DIR / file_name).read_bytes()).hexdigest()
    assert digest == BUNDLED_SHA256[file_name]


def test_data_readme_lists_checksums():
    readme = (data.DATA_DIR / "README.md").read_text(encoding="utf-8")
    for digest in BUNDLED_SHA256.values():
        assert digest in readme
    assert (data.DATA_DIR / "GSM8K_LICENSE").is_file()


@pytest.mark.parametrize(("split", "count"), [("train", 7473), ("test", 1319)])
def test_gsm8k_split_counts(split, count):
    problems = data.load_gsm8k(split)
    assert len(problems) == count
    assert set(problems[0]) == {"question", "answer"}
    assert all(problem["question"] and problem["answer"] for problem in problems)


def test_gsm8k_answers_end_with_final_number():
    problems = data.load_gsm8k("test")
    assert all("\n#### " in problem["answer"] for problem in problems)


def test_gsm8k_malformed_line_names_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{"question": "q", "answ\n', encoding="utf-8")
    with pytest.raises(ValueError) as error:
        data.load_gsm8k("train", path=path)
    assert str(path) in str(error.value)
    assert "line 2" in str(error.value)


def test_gsm8k_missing_field_rejected(tmp_path):
    path = tmp_path / "no_answer.jsonl"
    path.write_text('{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="'answer'"):
        data.load_gsm8k("test", path=path)


def test_gsm8k_empty_file_rejected(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no problems"):
        data.load_gsm8k("test", path=path)


def test_gsm8k_path_override_reads_file(tmp_path):
    path = tmp_path / "two.jsonl"
    path.write_text(
        '{"question": "1+1?", "answer": "#### 2"}\n\n{"question": "2+2?", "answer": "#### 4"}\n',
        encoding="utf-8",
    )
    assert data.load_gsm8k("test", path=path) == [
        {"question": "1+1?", "answer": "#### 2"},
        {"question": "2+2?", "answer": "#### 4"},
    ]


def test_missing_file_raises_file_not_found(tmp_path):
    missing = tmp_path / "absent.jsonl"
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        data.load_gsm8k("train", path=missing)
    with pytest.raises(FileNotFoundError, match="absent.raw"):
        data.load_wikitext2_test(path=tmp_path / "absent.raw")


def test_invalid_arguments_rejected():
    with pytest.raises(ValueError, match="split"):
        data.load_gsm8k("validation")
    with pytest.raises(ValueError, match="source"):
        data.load_gsm8k("test", source="disk")
    with pytest.raises(ValueError, match="path override"):
        data.load_gsm8k("test", source="hub", path="x.jsonl")


def test_hub_source_without_datasets_names_fallback(monkeypatch):
    # A None entry in sys.modules makes `import datasets` raise ImportError, so no network.
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(data.DatasetUnavailableError, match="source='bundled'"):
        data.load_gsm8k("test", source="hub")
    with pytest.raises(data.DatasetUnavailableError, match="pip install datasets"):
        data.load_wikitext2_test(source="hub")


def test_wikitext_text_uses_newlines():
    text = data.load_wikitext2_test()
    assert "\r" not in text
    assert " = Robert Boulter = \n" in text
    assert len(text) > 1_000_000


def test_wikitext_paragraphs_exclude_headings():
    paragraphs = data.wikitext2_paragraphs()
    assert paragraphs
    assert not any(paragraph.startswith("=") and paragraph.endswith("=") for paragraph in paragraphs)
    assert all(paragraph.strip() == paragraph and paragraph for paragraph in paragraphs)


def test_gsm8k_text_format():
    documents = data.gsm8k_documents("train")
    assert len(documents) == 7473
    assert documents[0].startswith("Question: Natalia sold clips")
    assert "\nAnswer: Natalia sold 48/2" in documents[0]
    assert documents[0].endswith("#### 72")
    text = data.gsm8k_text("train")
    assert text.startswith(documents[0] + "\n\nQuestion: ")
    assert text.endswith(documents[-1] + "\n")


def test_gsm8k_prompts_from_test_split():
    test_questions = {problem["question"].strip() for problem in data.load_gsm8k("test")}
    result = data.prompts("gsm8k", 5)
    assert len(result) == 5
    for prompt in result:
        assert prompt.startswith("Question: ")
        assert prompt.endswith("\nAnswer:")
        assert prompt.removeprefix("Question: ").removesuffix("\nAnswer:") in test_questions


def test_wikitext_prompts_are_paragraph_starts():
    paragraphs = data.wikitext2_paragraphs()
    for prompt in data.prompts("wikitext", 5, seed=3):
        words = prompt.split()
        assert 0 < len(words) <= data.WIKITEXT_PROMPT_WORDS
        assert any(paragraph.startswith(prompt) for paragraph in paragraphs)


@pytest.mark.parametrize("dataset", ["gsm8k", "wikitext"])
def test_prompts_deterministic(dataset):
    first = data.prompts(dataset, 10, seed=0)
    assert first == data.prompts(dataset, 10, seed=0)
    assert first != data.prompts(dataset, 10, seed=1)
    assert len(set(first)) == 10


def test_prompts_invalid_arguments():
    with pytest.raises(ValueError, match="dataset"):
        data.prompts("c4", 2)
    with pytest.raises(ValueError, match="prompt count"):
        data.prompts("gsm8k", 1320)
    with pytest.raises(ValueError, match="prompt count"):
        data.prompts("gsm8k", -1)
