"""Robustness attacks on unlearned models (docs/attacks.md): relearning and weight quantization.

The cached stages that run them are in stages/attacks.py; the commands in commands/attack.py.
"""
from .quantize import (INCLUDE, quantizable_weights, quantization_attack, quantize_codes, quantize_model,
                       quantize_model_nf4, quantize_tensor)
from .relearn import (RELEARN_DATA, attack_rows, format_relearn_table, load_probe_split, probe_es,
                      probe_relearn_split, recovery_defined, recovery_ratio, relearn_attack, save_probe_split)

__all__ = ["INCLUDE", "RELEARN_DATA", "attack_rows", "format_relearn_table", "load_probe_split", "probe_es",
           "probe_relearn_split", "quantizable_weights", "quantization_attack", "quantize_codes", "quantize_model",
           "quantize_model_nf4", "quantize_tensor", "recovery_defined", "recovery_ratio", "relearn_attack",
           "save_probe_split"]
