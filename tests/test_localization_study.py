"""The localization benchmark (docs/studies.md#localization-benchmark) end to end at mini scale, and the study executors."""
import json

import pytest
import torch


def test_localization_benchmark_mini(tmp_path, mini_cfg):
    from loc_unlearn.evaluate.tradeoff import aues
    from loc_unlearn.masks.mask import Mask
    from loc_unlearn.studies.common import run_study
    from loc_unlearn.studies.localization_benchmark import design, enumerate_jobs

    cfg = mini_cfg(tmp_path, "study.localizers=random,activation,wagle", "study.methods=npo",
                   "study.scopes=[global]", "study.layer_matched=true")  # the tiny preset runs both scopes
    names = ["random", "activation", "wagle", "random~activation", "random~wagle"]
    assert enumerate_jobs(cfg) == [{"localizer": l, "method": "npo"} for l in names]
    d = run_study(cfg, design(cfg))
    res = json.loads((d / "results.json").read_text())
    assert [r["localizer"] for r in res["runs"]] == names
    counts = {m["localizer"]: m["per_layer_counts"] for m in res["masks"]}
    assert counts["random~wagle"] == counts["wagle"] and counts["random~activation"] == counts["activation"]
    for r in res["runs"]:
        t = r["trajectory"]
        assert r["aues"] == pytest.approx(aues([p["FS"] for p in t], [p["RS"] for p in t]), abs=1e-12)
    # every run starts from the same full-data model: identical theta_0 point
    assert len({json.dumps(r["trajectory"][0]) for r in res["runs"]}) == 1
    sizes = {m["localizer"]: sum(m["per_layer_counts"]) for m in res["masks"]}
    assert len(set(sizes.values())) == 1 and sizes["random"] == round(0.1 * 2 * 64)
    assert (d / "report.html").is_file() and (d / "report.md").is_file()
    # the masks the runs used: a layer-matched control has its source's per-layer counts but other vectors
    used = {r["localizer"]: Mask.load(json.loads(open(f"{r['run_dir']}/metrics.json").read())["mask"])
            for r in res["runs"]}
    for src in ("activation", "wagle"):
        ctl = used["random~" + src]
        assert ctl.per_layer_counts() == used[src].per_layer_counts() and not torch.equal(ctl.mask, used[src].mask)
    assert not torch.equal(used["random"].mask, used["activation"].mask)


def test_submitit_debug_executor_matches_local(tmp_path, mini_cfg):
    """`study.executor=debug` goes through submitit (job submission, waiting, gather) and gives the same
    results as running in process."""
    pytest.importorskip("submitit")
    from loc_unlearn.studies.common import run_study
    from loc_unlearn.studies.controlled import design, enumerate_jobs

    local = mini_cfg(tmp_path / "a", "study.seeds=1", "study.methods=npo", "study.localizers=[]",
                     "study.output_fit=false")
    debug = mini_cfg(tmp_path / "b", "study.seeds=1", "study.methods=npo", "study.localizers=[]",
                     "study.output_fit=false", "study.executor=debug")
    assert enumerate_jobs(debug) == [{"seed": 0, "method": "npo", "region": r} for r in ("oracle", "random")]
    ra = json.loads((run_study(local, design(local)) / "results.json").read_text())
    rb = json.loads((run_study(debug, design(debug)) / "results.json").read_text())
    strip = lambda res: [{k: v for k, v in r.items() if k != "run_dir"} for r in res["runs"]]  # noqa: E731
    assert strip(ra) == strip(rb)
    assert list((tmp_path / "b" / "submitit").rglob("*")), "submitit was not used"
