"""The one record a model's evaluation travels in: a trajectory point.

`evaluate_model` (tofu.py) returns the full metrics of one model; a `Point` keeps what the trajectory,
the study results and the report use: the step, FS, RS, MU, log10 FQ, and every extra metric named in
`eval.metrics` (built in or a plug-in; `Point.metrics`, name -> value). It is stored as a plain dict in
metrics.json / results.json (`to_dict`), so old files stay readable and the JSON schema is unchanged
for runs without extra metrics; readers go through `Point.from_dict`.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Point:
    step: int
    """Optimizer step of the checkpoint (0 = theta_0; -1 when not read from its name)."""
    FS: float
    """Forget score: 1 - mean forget ES (docs/metrics.md)."""
    RS: float
    """Retain score: mean retain ES."""
    MU: float | None
    """Model Utility; None at ES-only points (eval.full_at=ends)."""
    log10_FQ: float | None
    """log10 Forget Quality against the reference; None without one or at ES-only points."""
    es_only: bool = False
    """Only FS and RS were computed at this point."""
    metrics: dict = field(default_factory=dict)
    """Extra metrics (eval.metrics): name -> value; absent at ES-only points."""
    extra: dict = field(default_factory=dict)
    """Fields a producer adds (mix: the mixing weight; model: the checkpoint named on the command line)."""

    @classmethod
    def from_metrics(cls, step: int, met: dict, **extra) -> "Point":
        """The point of one model from `evaluate_model`'s output."""
        return cls(step=step, FS=met["FS"], RS=met["RS"], MU=met["MU"], log10_FQ=met.get("log10_FQ"),
                   es_only=bool(met.get("es_only")), metrics=dict(met.get("metrics") or {}), extra=extra)

    def to_dict(self) -> dict:
        d = {"step": self.step, "FS": self.FS, "RS": self.RS, "MU": self.MU, "log10_FQ": self.log10_FQ}
        if self.es_only:
            d["es_only"] = True
        if self.metrics:
            d["metrics"] = dict(self.metrics)
        return d | self.extra

    @classmethod
    def from_dict(cls, d: dict) -> "Point":
        known = {"step", "FS", "RS", "MU", "log10_FQ", "es_only", "metrics"}
        return cls(step=d["step"], FS=d["FS"], RS=d["RS"], MU=d.get("MU"), log10_FQ=d.get("log10_FQ"),
                   es_only=bool(d.get("es_only")), metrics=dict(d.get("metrics") or {}),
                   extra={k: v for k, v in d.items() if k not in known})

