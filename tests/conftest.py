import os

os.environ.setdefault("LOC_UNLEARN_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

# Tiny models are overhead-bound; one thread avoids oversubscribing small CI machines.
torch.set_num_threads(1)

import pytest


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """A small synthetic author world in TOFU's format (10 authors x 6 QA)."""
    from loc_unlearn.data.synthetic import write_world

    return write_world(tmp_path_factory.mktemp("world"), n_authors=10, qa_per_author=6, seed=0,
                       n_real_authors=8, n_world_facts=8)


@pytest.fixture(scope="session")
def tiny_model_dir(world_dir, tmp_path_factory):
    """An untrained 2-layer tiny Llama + BPE tokenizer saved as a HF folder (safetensors)."""
    from loc_unlearn.config import TinyModelConfig
    from loc_unlearn.models.load import build_tiny

    cfg = TinyModelConfig(n_layers=2, hidden=32, d_ff=64, n_heads=2, vocab_size=400)
    return build_tiny(world_dir, cfg, tmp_path_factory.mktemp("tiny") / "model")
