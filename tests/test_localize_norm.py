"""The `norm` localizer: ||v||_2, or ||v - v_ref||_2 with localize.reference (the localization check's sanity row)."""
import copy
import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from loc_unlearn.config import LocalizeConfig
from loc_unlearn.errors import UserError
from loc_unlearn.masks import Mask
from loc_unlearn.masks.localize import LOCALIZERS, localize
from loc_unlearn.masks.localize.norm import norm_scores
from loc_unlearn.models.load import save_model
from loc_unlearn.models.value_vectors import value_matrix
from helpers import word_tokenizer

L, D_FF = 3, 64
ROWS = [{"question": "Who is Ana ?", "answer": "Ana is a poet ."}]


def make_model(d_ff=D_FF, seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=d_ff, num_hidden_layers=L,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                        pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()


def target(seed=1, k=19):
    """A random set of k value vectors spread over layers, as a bool [L, d_ff] mask."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(L * D_FF, dtype=torch.bool)
    m[torch.randperm(L * D_FF, generator=g)[:k]] = True
    return m.view(L, D_FF)


def edit_columns(model, mask, fn):
    with torch.no_grad():
        for l in range(L):
            cols = mask[l].nonzero().flatten()
            v = value_matrix(model, l)
            v[:, cols] = fn(v[:, cols])


def cfg(**kw):
    return dataclasses.replace(LocalizeConfig(), method="norm", **kw)


def test_registered():
    assert LOCALIZERS.get("norm").fn is norm_scores


def test_norm_recovers_inflated_columns():
    model, tgt = make_model(), target()
    edit_columns(model, tgt, lambda v: 10 * v)  # a norm-inflated injection
    m = localize(cfg(ratio=int(tgt.sum()) / (L * D_FF)), model, None, ROWS, ROWS)
    assert m.count == int(tgt.sum())
    assert m.precision_recall(Mask(tgt)) == {"precision": 1.0, "recall": 1.0}
    # the scores are the column norms themselves
    s = norm_scores(cfg(), model, None, ROWS, ROWS)
    assert s.shape == (L, D_FF) and s.dtype == torch.float64
    for l in range(L):
        assert torch.allclose(s[l], value_matrix(model, l).double().norm(dim=0))


def test_reference_recovers_changed_columns_whose_norms_are_not_largest(tmp_path):
    theta_r, tgt = make_model(), target(seed=2)
    theta_o = copy.deepcopy(theta_r)
    edit_columns(theta_o, tgt, lambda v: 0.6 * v)  # changed, and now among the SMALLEST norms
    ratio = int(tgt.sum()) / (L * D_FF)
    plain = localize(cfg(ratio=ratio), theta_o, None, ROWS, ROWS)
    assert plain.precision_recall(Mask(tgt))["precision"] < 0.3  # the plain norm cannot see this change

    ref_dir = save_model(theta_r, word_tokenizer(ROWS), tmp_path / "theta_r")
    m = localize(cfg(ratio=ratio, reference=str(ref_dir)), theta_o, None, ROWS, ROWS)
    assert m.precision_recall(Mask(tgt)) == {"precision": 1.0, "recall": 1.0}
    assert m.meta["reference"] == str(ref_dir) and m.meta["method"] == "norm"
    back = Mask.load(m.save(tmp_path / "m.safetensors"))
    assert back == m and back.meta["reference"] == str(ref_dir)
    # an in-memory reference (Python callers) gives the same scores; unchanged columns score exactly 0
    s = norm_scores(cfg(), theta_o, None, ROWS, ROWS, reference=theta_r)
    assert torch.equal(s[~tgt], torch.zeros(int((~tgt).sum()), dtype=torch.float64)) and (s[tgt] > 0).all()
    per_layer = localize(cfg(ratio=0.25, scope="per_layer", reference=str(ref_dir)), theta_o, None, ROWS, ROWS)
    assert per_layer.per_layer_counts() == [16] * L


def test_reference_of_another_shape_is_a_clear_error(tmp_path):
    other = save_model(make_model(d_ff=32), word_tokenizer(ROWS), tmp_path / "other")
    with pytest.raises(UserError, match="localize.reference.*does not match"):
        localize(cfg(reference=str(other)), make_model(), None, ROWS, ROWS)
