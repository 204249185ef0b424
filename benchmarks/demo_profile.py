"""Where a study's time went, read from its runs directory (issue 22: profile the demo before cutting it).

Every cached run records how long its build took (metrics.json `elapsed_s`) and which runs it used while
building (manifest.json `inputs`); a run's own time is its elapsed time less that of the runs it built
inside its build. Unlearning runs are split into training and evaluating their checkpoints (the
checkpoint files' times: a run trains first, then evaluates each checkpoint). Process-seconds add up
across worker processes, so with study.workers > 1 their sum exceeds the wall time.

    python benchmarks/demo_profile.py RUNS_DIR [WALL_SECONDS]
"""
import json
import sys
from collections import defaultdict
from pathlib import Path


def runs(root: Path) -> dict[str, dict]:
    out = {}
    for man in root.glob("*/*/manifest.json"):
        d = man.parent
        met = d / "metrics.json"
        if not met.is_file():
            continue
        m = json.loads(met.read_text())
        if "elapsed_s" not in m:
            continue
        end = met.stat().st_mtime
        out[str(d.resolve())] = {"stage": d.parent.name, "elapsed": float(m["elapsed_s"]), "end": end,
                                 "start": end - float(m["elapsed_s"]),
                                 "inputs": json.loads(man.read_text()).get("inputs", []), "dir": d}
    return out


def unlearn_split(r: dict) -> tuple[float, float]:
    """(training s, evaluation s) of an unlearning run from its checkpoint files' modification times."""
    deltas = sorted(f.stat().st_mtime for f in (r["dir"] / "train").glob("ckpt-*/*.safetensors"))
    if not deltas:
        return r["own"], 0.0
    train = max(0.0, deltas[-1] - r["start"])
    return min(train, r["own"]), max(0.0, r["own"] - train)


def main(root: str, wall: str | None = None) -> None:
    rs = runs(Path(root))
    for key, r in rs.items():
        inner = 0.0
        for i in r["inputs"]:
            c = rs.get(str(Path(i).resolve()))
            if c and c["start"] >= r["start"] - 1 and c["end"] <= r["end"] + 1 and c is not r:
                inner += c["elapsed"]
        r["own"] = max(0.0, r["elapsed"] - inner)
    total, count = defaultdict(float), defaultdict(int)
    for r in rs.values():
        if r["stage"].startswith("study"):
            continue
        if r["stage"] == "unlearn":
            tr, ev = unlearn_split(r)
            total["unlearn: training"] += tr
            total["unlearn: evaluating checkpoints"] += ev
            count["unlearn: training"] += 1
            count["unlearn: evaluating checkpoints"] += 1
        else:
            total[r["stage"]] += r["own"]
            count[r["stage"]] += 1
    s = sum(total.values())
    print(f"| stage | runs | process-seconds | share |\n|---|---|---|---|")
    for k in sorted(total, key=total.get, reverse=True):
        print(f"| {k} | {count[k]} | {total[k]:.1f} | {100 * total[k] / s:.0f}% |")
    print(f"| **all cached runs** | {sum(count.values())} | **{s:.1f}** | |")
    study = [r for r in rs.values() if r["stage"].startswith("study")]
    if study:
        print(f"\nstudy run's own elapsed: {max(r['elapsed'] for r in study):.1f} s")
    if wall:
        print(f"wall {float(wall):.0f} s: process-seconds / wall = {s / float(wall):.2f} (workers in parallel; "
              f"the rest of the wall is process start, gathering, tests and the report)")


if __name__ == "__main__":
    main(*sys.argv[1:])
