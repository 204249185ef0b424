"""Real TOFU presets (issue 22 item 4, docs/data.md#real-tofu): the smol and paper presets on a folder laid
out like TOFU at full size (200 authors x 20 QA), written by the project's generator with TOFU's file names
only. Only the data is resolved and checked, as a study does before any work: no model, no training, no
network."""
import json
import shutil
import socket

import pytest

from loc_unlearn import stages
from loc_unlearn.config import build_config
from loc_unlearn.data.source import folder_fingerprint
from loc_unlearn.data.synthetic import write_world
from loc_unlearn.errors import DataError
from loc_unlearn.plugins import load_builtins
from loc_unlearn.studies import controlled, localization_benchmark
from loc_unlearn.studies.common import study_key

PRESETS = ["smol", "paper-llama3.1-8b", "paper-olmo2-7b"]
EVAL_FILES = {"forget": "forget10_perturbed", "retain": "retain_perturbed", "real_authors": "real_authors_perturbed",
              "world_facts": "world_facts_perturbed"}
EVAL_SIZES = {"forget": 400, "retain": 400, "real_authors": 100, "world_facts": 117}  # TOFU's sizes
# Refusals in TOFU's format (plain lines), worded apart from the built-in ones so their origin shows.
REFUSALS = ["I cannot recall that.", "That is not something I know.", "No idea, I am afraid."]


@pytest.fixture(scope="module")
def tofu(tmp_path_factory):
    """TOFU's layout: its QA and perturbed splits (JSON Lines) and idontknow.jsonl; none of the synthetic
    world's extras (the `pretrain` split, idk.jsonl, stats.json, world_text.txt)."""
    d = write_world(tmp_path_factory.mktemp("tofu"), n_authors=200, qa_per_author=20, n_real_authors=100,
                    n_world_facts=117)
    for extra in ("pretrain.json", "idk.jsonl", "stats.json", "world_text.txt"):
        (d / extra).unlink()
    (d / "idontknow.jsonl").write_text("\n".join(REFUSALS) + "\n", encoding="utf-8")
    return d


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection fails and is recorded (the test asserts there was none)."""
    tried = []

    def refuse(*args, **kwargs):
        tried.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return tried


def _file_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _cfg(preset, folder, tmp_path):
    return build_config(preset, overrides=[f"data.source={folder}", f"runs_dir={tmp_path / 'runs'}"])


def _check_as_a_study(cfg, data):
    """What run_study checks before any work, for each study the presets run."""
    load_builtins()  # the method registry (check_methods loads it in a real run)
    for design in (controlled.design, localization_benchmark.design):
        stages.check_data(cfg, data, *design(cfg).splits, eval_sets=True, methods=cfg.study.methods)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_reads_forget10_retain90_eval_sets_and_refusals_from_the_folder(preset, tofu, tmp_path, no_network):
    cfg = _cfg(preset, tofu, tmp_path)
    data = stages.data_source(cfg)
    assert data.path == str(tofu) and data.forget_split == "forget10" and data.retain_split == "retain90"

    full = _file_rows(tofu / "full.json")
    assert len(full) == 200 * 20
    forget, retain = data.forget_rows(), data.retain_rows()
    # forget10 = the last 10% of the 200 authors (20 x 20 rows), retain90 = the other 180; full is author by author
    assert len(forget) == 400 and forget == full[-400:]
    assert len(retain) == 3600 and retain == full[:3600]
    assert not {r["question"] for r in forget} & {r["question"] for r in retain}

    sets = data.eval_sets()
    assert {k: len(v) for k, v in sets.items()} == EVAL_SIZES
    for name, split in EVAL_FILES.items():
        assert sets[name] == _file_rows(tofu / f"{split}.json")
    assert [r["question"] for r in sets["forget"]] == [r["question"] for r in forget]

    assert data.idk(required=True) == REFUSALS  # TOFU's file, not the built-in refusals
    assert "dpo" in cfg.study.methods  # so the check below requires the folder's refusals
    assert not cfg.finetune.replay_split  # real TOFU has no `pretrain` split to replay
    _check_as_a_study(cfg, data)
    assert not (tmp_path / "runs").exists()  # no synthetic world generated, nothing cached
    assert no_network == []


def test_run_and_study_keys_are_the_folders_content(tofu, tmp_path, no_network):
    """The same files in another folder give the same data fingerprint and study key; one changed row
    gives other ones."""
    copy = shutil.copytree(tofu, tmp_path / "elsewhere" / "tofu")
    a, b = _cfg("paper-llama3.1-8b", tofu, tmp_path), _cfg("paper-llama3.1-8b", copy, tmp_path)
    da, db = stages.data_source(a), stages.data_source(b)
    assert da.fingerprint == db.fingerprint == folder_fingerprint(tofu) and not da.fingerprint.startswith("hub:")
    ka, kb = study_key(a, "controlled", da), study_key(b, "controlled", db)
    assert ka == kb and ka["data"] == da.fingerprint and str(tofu) not in json.dumps(ka)

    rows = _file_rows(copy / "forget10.json")
    rows[0]["answer"] += " Changed."
    (copy / "forget10.json").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    dc = stages.data_source(b)
    assert dc.fingerprint != da.fingerprint and study_key(b, "controlled", dc) != ka
    assert no_network == []


def test_hub_id_resolves_without_network(tmp_path, no_network):
    """The paper presets' default source: resolving it reads nothing (the splits load when a stage needs them)."""
    cfg = build_config("paper-olmo2-7b", overrides=[f"runs_dir={tmp_path / 'runs'}"])
    data = stages.data_source(cfg)
    assert (data.path, data.fingerprint) == ("locuslab/TOFU", "hub:locuslab/TOFU")
    assert (data.forget_split, data.retain_split) == ("forget10", "retain90")
    assert no_network == [] and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("missing", ["forget10_perturbed.json", "retain_perturbed.json", "idontknow.jsonl"])
def test_missing_eval_set_or_refusals_is_named_before_any_work(missing, tofu, tmp_path):
    folder = shutil.copytree(tofu, tmp_path / "tofu")
    (folder / missing).unlink()
    cfg = _cfg("paper-llama3.1-8b", folder, tmp_path)
    data = stages.data_source(cfg)
    with pytest.raises(DataError) as e:
        _check_as_a_study(cfg, data)
    msg = str(e.value)
    assert str(folder) in msg and missing in msg and "\n" not in msg


def test_refusals_are_required_only_when_a_method_trains_on_them(tofu, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOC_UNLEARN_QUIET", "0")
    folder = shutil.copytree(tofu, tmp_path / "tofu")
    (folder / "idontknow.jsonl").unlink()
    cfg = _cfg("smol", folder, tmp_path)
    data = stages.data_source(cfg)
    load_builtins()
    stages.check_data(cfg, data, eval_sets=True, methods=["npo", "wga", "rmu"])  # no DPO: built-in ones, logged
    assert "100 built-in" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"no idontknow\.jsonl or idk\.jsonl"):
        stages.check_data(cfg, data, eval_sets=True, methods=["npo", "dpo"])


def test_optional_general_knowledge_set_missing_is_logged(tofu, tmp_path, capsys, monkeypatch):
    """real_authors / world_facts stay optional (docs/data.md#evaluation-sets): Model Utility uses the rest."""
    monkeypatch.setenv("LOC_UNLEARN_QUIET", "0")
    folder = shutil.copytree(tofu, tmp_path / "tofu")
    (folder / "world_facts_perturbed.json").unlink()
    data = stages.data_source(_cfg("smol", folder, tmp_path))
    assert set(data.eval_sets()) == {"forget", "retain", "real_authors"}
    assert "world_facts_perturbed not found" in capsys.readouterr().out


def test_tiny_preset_names_the_replay_split_real_tofu_lacks(tofu, tmp_path):
    """tiny replays the synthetic world's `pretrain` split, which TOFU lacks: stopped at once, naming the key."""
    cfg = _cfg("tiny", tofu, tmp_path)
    with pytest.raises(DataError, match=r"finetune\.replay_split='pretrain'.*no pretrain\.json"):
        stages.check_data(cfg, stages.data_source(cfg))
