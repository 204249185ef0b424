"""What every stage shares: `ModelRef` (a model to load plus its fingerprint for run keys), resolving a
model named in a config or on the command line, and the exact-match summary the training stages record."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import Config
from ..errors import UserError
from ..evaluate.token_metrics import token_metrics
from ..models.load import load_model
from ..runs import Run
from ..utils import place


@dataclasses.dataclass
class ModelRef:
    """A model to load: a folder or hub id, plus a fingerprint for run keys."""
    path: str
    fingerprint: str
    run: Run | None = None

    def load(self, cfg: Config):
        """(model, tokenizer), the model already on the device of `cfg.device` (utils.place): every stage
        loads its models here, so all of them run where the one setting says."""
        m = cfg.model
        # The GGUF file name applies only to the configured base model itself.
        gguf = m.gguf_file if (m.gguf_file and self.path == m.path) else ""
        model, tok = load_model(self.path, dtype=m.dtype, gguf_file=gguf, trust_remote_code=m.trust_remote_code,
                                allow_pickle=m.allow_pickle)
        return place(model, cfg.device), tok


def ref_of_run(run: Run) -> ModelRef:
    """The model a cached run saved under `model/`."""
    return ModelRef(path=str(run.path / "model"), fingerprint=run.fingerprint, run=run)


def resolve_model(text: str, key: str) -> ModelRef:
    """A model named under config key `key` (model=, reference=, checkpoints=, attack.theta_o=): a run
    directory, a run's model folder (both verified against the run's manifest), another local folder or a
    hub id. A path-like name that does not exist is an error at once (never retried as a hub id)."""
    p = Path(text)
    if (p / "manifest.json").is_file() and (p / "model").is_dir():
        p = p / "model"
    if (p.parent / "manifest.json").is_file():
        run = Run(p.parent, "model", {})
        run.verify()
        return ModelRef(str(p), run.fingerprint, run)
    if p.is_dir():
        return ModelRef(str(p), f"model:{text}")
    if not p.exists() and looks_like_path(text):
        raise UserError(f"{key}={text}: no such folder (expected a run directory, a model folder "
                        f"or a hub id like owner/name)")
    if p.is_file():
        raise UserError(f"{key}={text}: is a file; expected a run directory, a model folder or a hub id")
    return ModelRef(text, f"model:{text}")


def looks_like_path(text: str) -> bool:
    """Not a hub id (owner/name): starts with . / ~, has other than exactly one '/', or its first part is
    a local folder (runs/typo: a mistyped run, not the hub user 'runs')."""
    return text.startswith((".", "/", "~")) or text.count("/") != 1 or Path(text).parent.is_dir()


def optional_model(text: str, key: str) -> ModelRef | None:
    """`resolve_model` for an optional setting: None when `text` is empty."""
    return resolve_model(text, key) if text else None


def exact_match_rate(model, tok, rows, cfg: Config) -> dict:
    """Fraction of answers reproduced exactly by greedy decoding from the prompt (ES == 1,
    docs/metrics.md#extraction-strength-es), and the mean ES."""
    tm = token_metrics(model, tok, rows, batch_size=cfg.eval.batch_size, answer_only=True)  # ES: the answer pass
    es = tm["es"]
    return {"exact_greedy": sum(1 for e in es if e >= 1.0 - 1e-9) / max(1, len(es)), "mean_es": sum(es) / max(1, len(es))}
