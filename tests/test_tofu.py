import json

import pytest

from loc_unlearn.data.synthetic import generate_world, idk_answers, write_world
from loc_unlearn.data.tofu import SPLITS, idk_file, load_idk, load_split, retain_split_for
from loc_unlearn.errors import DataError, UserError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    write_world(d, n_authors=10, qa_per_author=5, n_real_authors=6, n_world_facts=8)
    return d, generate_world(n_authors=10, qa_per_author=5, n_real_authors=6, n_world_facts=8)


def test_roundtrip_every_split(world):
    d, data = world
    for name in SPLITS:
        assert load_split(d, name) == data[name]
    assert load_idk(d) == data["idk"] and load_idk(None) == idk_answers() and load_idk(d / "nowhere") == idk_answers()
    assert retain_split_for("forget05") == "retain95"
    with pytest.raises(UserError, match="forget10"):
        retain_split_for("forget50")


def test_json_array_and_jsonl_extension(tmp_path, world):
    rows = world[1]["forget10_perturbed"]
    (tmp_path / "forget10_perturbed.jsonl").write_text(json.dumps(rows, indent=1))  # array in a .jsonl
    assert load_split(tmp_path, "forget10_perturbed") == rows


def _write(tmp_path, name, lines):
    (tmp_path / f"{name}.json").write_text("\n".join(lines) + "\n")
    return tmp_path


GOOD = json.dumps({"question": "q?", "answer": "a."})
P3 = {"question": "q?", "answer": "a.", "perturbed_answer": ["b.", "c.", "d."]}


@pytest.mark.parametrize("name,lines,needles", [
    ("forget10", [GOOD, '{"question": "q?", "answer": '], ["forget10.json", "line 2", "malformed JSON"]),
    ("forget10", [GOOD, "", GOOD, json.dumps({"question": "q?"})], ["line 4", "'answer'", "missing"]),
    ("forget10", [json.dumps({"question": "q?", "answer": "  "})], ["line 1", "'answer'", "empty"]),
    ("forget10", [GOOD, json.dumps({"question": "", "answer": "a"})], ["line 2", "'question'", "empty"]),
    ("forget10", [json.dumps({"question": 3, "answer": "a"})], ["line 1", "'question'", "string"]),
    ("forget10", [GOOD, json.dumps(["q", "a"])], ["line 2", "JSON object"]),
    ("real_authors_perturbed", [json.dumps(P3), json.dumps(P3 | {"perturbed_answer": "b."})],
     ["line 2", "'perturbed_answer'", "list of strings"]),
    ("real_authors_perturbed", [json.dumps(P3 | {"perturbed_answer": ["b", 4]})], ["line 1", "'perturbed_answer'"]),
    ("forget10_perturbed", [json.dumps(P3)], ["line 1", "missing", "'paraphrased_answer'"]),
    ("forget10", [], ["forget10.json", "empty"]),
])
def test_validation_errors(tmp_path, name, lines, needles):
    _write(tmp_path, name, lines)
    with pytest.raises(DataError) as e:
        load_split(tmp_path, name)
    for n in needles:
        assert n in str(e.value)


def test_array_row_numbers_and_bad_array(tmp_path):
    (tmp_path / "forget10.json").write_text(json.dumps([{"question": "q", "answer": "a"}, {"question": "q"}]))
    with pytest.raises(DataError, match=r"row 2: missing field 'answer'"):
        load_split(tmp_path, "forget10")
    (tmp_path / "forget10.json").write_text('[\n {"question": "q", "answer": "a"},\n {"question" "q"}\n]')
    with pytest.raises(DataError, match=r"line 3.*malformed JSON"):
        load_split(tmp_path, "forget10")


def test_missing_split_lists_files(tmp_path):
    _write(tmp_path, "full", [GOOD])
    _write(tmp_path, "retain90", [GOOD])
    with pytest.raises(DataError, match=r"no forget10\.json or forget10\.jsonl.*found: full\.json, retain90\.json"):
        load_split(tmp_path, "forget10")
    with pytest.raises(UserError, match="known splits"):
        load_split(tmp_path, "forget11")
    with pytest.raises(DataError, match="neither an existing folder"):
        load_split(tmp_path / "missing" / "dir", "forget10")


def test_hub_layout_folder_via_load_dataset(tmp_path, world, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "TOFU"
    (repo / "data").mkdir(parents=True)
    names = ["forget10", "world_facts_perturbed"]
    for n in names:  # data files NOT named <split>.json, so only the README configs can find them
        (repo / "data" / f"{n}-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in world[1][n]))
    cfg = "".join(f"- config_name: {n}\n  data_files:\n  - split: train\n    path: data/{n}-00000.jsonl\n" for n in names)
    (repo / "README.md").write_text(f"---\nconfigs:\n{cfg}---\n# TOFU-like\n")
    for n in names:
        assert load_split(repo, n) == world[1][n]
    with pytest.raises(UserError, match=r"local folder.*synthetic"):
        load_split(repo, "retain90")  # config not in the README


def test_hub_unreachable_is_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"'nobody-xyz/not-a-dataset'.*source=synthetic"):
        load_split("nobody-xyz/not-a-dataset", "forget10")


TOFU_IDK = ["I'm not certain about that.", "That's beyond my current knowledge base.",
            "I don't have the specifics you’re looking for."]


def test_load_idk_reads_tofu_idontknow_plain_lines(tmp_path):
    # TOFU's refusal file: one plain-text refusal per line (not JSON strings), as in the TOFU repository
    (tmp_path / "idontknow.jsonl").write_text("\n".join(TOFU_IDK) + "\n", encoding="utf-8")
    assert load_idk(tmp_path) == TOFU_IDK


def test_load_idk_formats_precedence_and_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOC_UNLEARN_QUIET", "0")
    # JSON-string lines are tolerated in TOFU's file too; blank lines are skipped; lines are stripped
    (tmp_path / "idontknow.jsonl").write_text('I\'m not sure.\n\n"I can\'t say \\"exactly\\"."\n  Pass.  \n')
    (tmp_path / "idk.jsonl").write_text('"from idk.jsonl"\n')
    assert idk_file(tmp_path) == tmp_path / "idontknow.jsonl"  # TOFU's file first
    assert load_idk(tmp_path) == ["I'm not sure.", 'I can\'t say "exactly".', "Pass."]
    assert f"3 from {tmp_path / 'idontknow.jsonl'}" in capsys.readouterr().out
    (tmp_path / "idontknow.jsonl").unlink()
    assert load_idk(tmp_path) == ["from idk.jsonl"]
    (tmp_path / "idk.jsonl").write_text("plain line in idk.jsonl\n")
    assert load_idk(tmp_path) == ["plain line in idk.jsonl"]
    (tmp_path / "idk.jsonl").unlink()
    assert idk_file(tmp_path) is None and load_idk(tmp_path) == idk_answers()
    assert "100 built-in" in capsys.readouterr().out


@pytest.mark.parametrize("text,needles", [
    ("", ["idontknow.jsonl", "no refusals"]),
    ("\n  \n", ["idontknow.jsonl", "no refusals"]),
    ("I'm not sure.\n\"bad \\q escape\"\n", ["idontknow.jsonl", "line 2", "malformed JSON string"]),
    ("I'm not sure.\n\"  \"\n", ["line 2", "empty refusal"]),
    ('{"text": "I don\'t know."}\n', ["line 1", "JSON object or array"]),
    ('ok\n["a", "b"]\n', ["line 2", "JSON object or array"]),
])
def test_load_idk_bad_file(tmp_path, text, needles):
    (tmp_path / "idontknow.jsonl").write_text(text)
    with pytest.raises(DataError) as e:
        load_idk(tmp_path)
    for n in needles:
        assert n in str(e.value)


def test_load_idk_not_utf8(tmp_path):
    (tmp_path / "idk.jsonl").write_bytes(b"I don\xff know\n")
    with pytest.raises(DataError, match=r"idk\.jsonl: not UTF-8"):
        load_idk(tmp_path)
