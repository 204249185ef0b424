"""Stages: every cached, resumable run of the toolkit, in one package.

A stage is a plain function `stage(cfg, data, inputs...)`; its run directory is keyed by the config
sections it uses and the fingerprints of its inputs (runs.py), so a rerun reuses what is complete and
resumes the rest. Inputs are explicit: `data` is the `DataSource` that a command or study job resolves
once (`data_source(cfg)`) and passes down; models travel as `ModelRef`s (a path and a fingerprint).
Commands (commands/) and studies (studies/) only call these; stages call the layers below them (data,
models, masks, train, evaluate, attacks) and never a command, a study or the report. Data flows one way:

    data -> theta_p (base) -> theta_r (finetune) -> masks (localize) -> theta_o (inject)
         -> unlearning trajectory (unlearn) -> evaluation, output fit, positive control, attacks

Several processes (`accelerate launch` / torchrun): the stages that train are `cached(collective=True)`,
so their build runs on every process. runs.cached writes metrics and the manifest from the main process;
the files such a build writes itself (models, masks, checkpoint metrics) are written under
`is_main_process()`, because every process holds the same copy. Other stages are built by the main
process alone.

| module       | stages (runs_dir/<stage>/<hash>)                                   |
|--------------|---------------------------------------------------------------------|
| data.py      | data (synthetic world); data_source, utility_sets, check_data       |
| models.py    | base (tiny), finetune (theta_r, full-data model)                    |
| masks.py     | localize (every mask, random ones included)                         |
| inject.py    | inject_full (target ES), inject (theta_o); prepare_seed             |
| evaluate.py  | evaluate (one model); trajectory (checkpoint folders)               |
| unlearn.py   | unlearn (trajectory, AUES, MU95)                                    |
| analysis.py  | output_fit, control_reset                                           |
| attacks.py   | attack_relearn, attack_quantize, checkpoint_model                   |
"""
from .analysis import output_fit, reset_region
from .attacks import attack_train_config, checkpoint_model, qa_per_author, quantize, relearn
from .common import ModelRef, exact_match_rate, looks_like_path, optional_model, ref_of_run, resolve_model
from .data import check_data, data_source, synthetic_world, utility_sets, world_args
from .evaluate import evaluate, eval_key, reference_truth_ratios, trajectory
from .inject import full_injection_es, inject, prepare_seed
from .masks import localize, random_mask
from .models import base_model, finetune, finetune_on, retain_model, tiny_base
from .unlearn import unlearn

__all__ = ["ModelRef", "attack_train_config", "base_model", "check_data", "checkpoint_model", "data_source",
           "eval_key", "evaluate", "exact_match_rate", "finetune", "finetune_on", "full_injection_es", "inject",
           "localize", "looks_like_path", "optional_model", "output_fit", "prepare_seed", "qa_per_author",
           "quantize", "random_mask", "ref_of_run", "reference_truth_ratios", "relearn", "reset_region",
           "resolve_model", "retain_model", "synthetic_world", "tiny_base", "trajectory", "unlearn", "utility_sets",
           "world_args"]
