import pytest

from loc_unlearn.errors import CheckpointError
from loc_unlearn.runs import cached, get_run


def test_cached_reuses_complete_runs_and_hashes_key(tmp_path):
    calls = []

    def build(p):
        calls.append(p)
        (p / "w.bin").write_bytes(b"abc" * 100)
        return {"x": 1}

    r1 = cached(tmp_path, "stage", {"a": 1}, build)
    r2 = cached(tmp_path, "stage", {"a": 1}, build)
    r3 = cached(tmp_path, "stage", {"a": 2}, build)
    assert r1.path == r2.path != r3.path
    assert len(calls) == 2
    assert r1.metrics()["x"] == 1 and "w.bin" in r1.manifest()["files"]


def test_incomplete_run_is_rebuilt_not_used(tmp_path):
    run = get_run(tmp_path, "stage", {"a": 1})
    (run.path / "partial.bin").write_bytes(b"half")  # a crash before the manifest
    assert not run.is_complete()
    r = cached(tmp_path, "stage", {"a": 1}, lambda p: {"done": True})
    assert r.is_complete() and r.metrics()["done"]


@pytest.mark.parametrize("damage", ["truncate", "alter", "delete"])
def test_damaged_run_is_refused(tmp_path, damage):
    r = cached(tmp_path, "stage", {"a": 1}, lambda p: (p / "w.bin").write_bytes(b"0123456789") and {})
    f = r.path / "w.bin"
    if damage == "truncate":
        f.write_bytes(b"01234")
    elif damage == "alter":
        f.write_bytes(b"0123456780")
    else:
        f.unlink()
    with pytest.raises(CheckpointError, match="w.bin"):
        cached(tmp_path, "stage", {"a": 1}, lambda p: {})
