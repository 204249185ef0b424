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


# ----------------------------------------------------------------------------- shared helpers as fixtures
# The implementations are plain functions in helpers.py (importable where no fixture reaches: worker
# scripts, module-level helpers, subprocess arguments); tests take these fixtures instead.


@pytest.fixture(scope="session")
def tiny_lm():
    """The one tiny-model builder: tiny_lm(vocab_or_tokenizer, L=, d=, d_ff=, heads=, ..., arch="llama"|"gpt2")."""
    import helpers

    return helpers.tiny_lm


@pytest.fixture(scope="session")
def word_tokenizer():
    """word_tokenizer(rows): one token per word, <pad>=0, <eos>=1, <bos>=2."""
    import helpers

    return helpers.word_tokenizer


@pytest.fixture(scope="session")
def mini_cfg():
    """mini_cfg(runs_dir, *extra_overrides): the mini controlled-study Config (helpers.MINI)."""
    import helpers

    return helpers.mini_cfg


@pytest.fixture(scope="session")
def memorized():
    """(model, tok, rows): the tiny Llama that memorized part of helpers.writer_rows(); built once per
    session (a few seconds) and shared read-only by the metric tests."""
    import helpers

    return helpers.memorized_model()


@pytest.fixture
def builtin_methods_only():
    """The test starts and ends with the built-in methods only: plug-ins it loads (in this process, CLI
    included) are dropped afterwards, so no test sees another's."""
    from loc_unlearn import plugins
    from loc_unlearn.registry import REGISTRIES

    plugins.load_builtins()
    before = {k: dict(r) for k, r in REGISTRIES.items()}
    loaded = dict(plugins._LOADED)
    yield
    for k, reg in REGISTRIES.items():
        reg.clear()
        reg.update(before[k])
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)
