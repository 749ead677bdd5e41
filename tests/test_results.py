"""The results store: atomic writes, reuse, keys and resuming an interrupted sweep."""

import json

import pytest

from hybridspec_lite import results


class Counter:
    """A compute function that counts its calls and returns its parameters."""

    def __init__(self):
        self.calls = 0

    def __call__(self, params=None):
        self.calls += 1
        return {"value": self.calls, "params": params}


def test_cached_reuses_finished_result(tmp_path):
    compute = Counter()
    first = results.cached("unit", {"k": 2}, compute, root=tmp_path)
    second = results.cached("unit", {"k": 2}, compute, root=tmp_path)
    assert compute.calls == 1
    assert first == second


def test_cached_returns_stored_json(tmp_path):
    value = results.cached("unit", {"k": 2}, lambda: {"pair": (1, 2)}, root=tmp_path)
    assert value == {"pair": [1, 2]}


def test_cached_writes_one_file_per_params(tmp_path):
    compute = Counter()
    results.cached("unit", {"k": 2}, compute, root=tmp_path)
    results.cached("unit", {"k": 3}, compute, root=tmp_path)
    results.cached("unit", {"k": 2, "seed": 1}, compute, root=tmp_path)
    files = sorted((tmp_path / "cache" / "unit").glob("*.json"))
    assert compute.calls == 3
    assert len(files) == 3


def test_key_ignores_dict_order():
    assert results.params_key({"a": 1, "b": [1, 2]}) == results.params_key({"b": [1, 2], "a": 1})


def test_key_depends_on_version():
    assert results.params_key({"k": 2}, version="0.1.0") != results.params_key({"k": 2}, version="0.2.0")


def test_key_rejects_non_json_params():
    with pytest.raises(TypeError, match="not plain JSON"):
        results.params_key({"model": object()})


def test_record_holds_params_and_version(tmp_path):
    results.cached("unit", {"k": 4}, lambda: 0.5, root=tmp_path)
    record = json.loads(results.result_path("unit", {"k": 4}, tmp_path).read_text())
    assert record["params"] == {"k": 4}
    assert record["version"] == results.__version__
    assert record["result"] == 0.5


def test_failed_compute_writes_nothing(tmp_path):
    def broken():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        results.cached("unit", {"k": 2}, broken, root=tmp_path)
    directory = tmp_path / "cache" / "unit"
    leftovers = list(directory.iterdir()) if directory.exists() else []
    assert leftovers == []


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "result.json"
    results.write_json_atomic(path, {"finished": True})
    with pytest.raises(TypeError):
        results.write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"finished": True}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_unreadable_file_is_recomputed(tmp_path):
    path = results.result_path("unit", {"k": 2}, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"result": ')
    compute = Counter()
    value = results.cached("unit", {"k": 2}, compute, root=tmp_path)
    assert compute.calls == 1
    assert value["value"] == 1


def test_sweep_resumes_after_crash(tmp_path):
    units = [{"k": k} for k in range(1, 7)]
    calls = []

    def crash_at_four(params):
        if params["k"] == 4:
            raise KeyboardInterrupt
        calls.append(params["k"])
        return params["k"] * 10

    with pytest.raises(KeyboardInterrupt):
        results.sweep("sweep", units, crash_at_four, root=tmp_path, progress=False)
    assert calls == [1, 2, 3]

    calls.clear()
    values = results.sweep("sweep", units, lambda params: calls.append(params["k"]) or params["k"] * 10, root=tmp_path, progress=False)
    assert calls == [4, 5, 6]
    assert values == [10, 20, 30, 40, 50, 60]


def test_load_missing_result_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished 'unit' result"):
        results.load("unit", {"k": 2}, root=tmp_path)


def test_invalid_name_rejected(tmp_path):
    with pytest.raises(ValueError, match="invalid result name"):
        results.cached("../escape", {}, lambda: 1, root=tmp_path)


def test_environment_variable_sets_root(tmp_path, monkeypatch):
    monkeypatch.setenv(results.ROOT_ENVIRONMENT_VARIABLE, str(tmp_path))
    results.cached("unit", {"k": 1}, lambda: 1)
    assert results.result_path("unit", {"k": 1}).parent.parent.parent == tmp_path


def test_save_figure_path(tmp_path):
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib comes with the book extra")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = results.save_figure(fig, "01_acceptance_vs_k", "alpha", root=tmp_path)
    plt.close(fig)
    assert path == tmp_path / "figures" / "01_acceptance_vs_k" / "alpha.png"
    assert path.stat().st_size > 0
