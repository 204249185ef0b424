"""Value-vector adapter (docs/localizers.md#value-vectors) on a randomly initialized tiny model of every architecture."""
import pytest
import torch
import transformers as tf

from loc_unlearn.errors import UserError
from loc_unlearn.models import value_vectors as vv

L, D, DFF = 3, 32, 48
LLAMA_LIKE = dict(vocab_size=64, hidden_size=D, intermediate_size=DFF, num_hidden_layers=L,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _configs():
    out = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, LLAMA_LIKE),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, LLAMA_LIKE),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, LLAMA_LIKE),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(LLAMA_LIKE, head_dim=8)),
        "olmo": (tf.OlmoConfig, tf.OlmoForCausalLM, LLAMA_LIKE),
        "olmo2": (tf.Olmo2Config, tf.Olmo2ForCausalLM, LLAMA_LIKE),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, dict(LLAMA_LIKE, head_dim=8)),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, dict(LLAMA_LIKE, head_dim=8)),
        "gemma3_text": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, dict(LLAMA_LIKE, head_dim=8)),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(LLAMA_LIKE, pad_token_id=0)),
        "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel,
                 dict(vocab_size=64, n_embd=D, n_inner=DFF, n_layer=L, n_head=4, n_positions=64)),
        "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM,
                     dict(vocab_size=64, hidden_size=D, intermediate_size=DFF, num_hidden_layers=L,
                          num_attention_heads=4, max_position_embeddings=64)),
    }
    if hasattr(tf, "Olmo3Config"):
        out["olmo3"] = (tf.Olmo3Config, tf.Olmo3ForCausalLM, LLAMA_LIKE)
    return out


CONFIGS = _configs()


def _build(arch):
    cfg_cls, model_cls, kw = CONFIGS[arch]
    torch.manual_seed(0)
    return model_cls(cfg_cls(**kw)).double().eval()


def test_every_supported_architecture_is_tested():
    # the adapter table and this test must not drift apart ("gemma3" is the multimodal wrapper,
    # whose text part is tested as gemma3_text)
    assert set(vv.ADAPTERS) - {"gemma3"} <= set(CONFIGS)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_shapes_and_fingerprint(arch):
    model = _build(arch)
    assert vv.shape(model) == (L, DFF)
    mods = vv.down_projs(model)
    assert len(mods) == L
    for l in range(L):
        V = vv.value_matrix(model, l)
        assert V.shape == (D, DFF)
        p, transposed = vv.down_proj_weight_param(model, l)
        assert isinstance(p, torch.nn.Parameter) and p is mods[l].weight
        assert transposed == (arch == "gpt2")
        assert V.data_ptr() == p.data_ptr()  # a view, not a copy
    fp = vv.fingerprint(model)
    assert fp == {"architecture": arch, "n_layers": L, "d_ff": DFF, "hidden": D}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_editing_a_value_vector_changes_mlp_output_by_a_i_delta(arch):
    """MLP_l(h) = W a(h): adding delta to column i moves the output by a_i * delta, nothing else."""
    model = _build(arch)
    l, i = 1, 7
    layer = vv._layers(model)[l]
    torch.manual_seed(1)
    h = torch.randn(2, 5, D, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), vv.capture_down_inputs(model) as acts:
        out0 = layer.mlp(h)
        delta = torch.randn(D, dtype=torch.float64)
        vv.value_matrix(model, l)[:, i] += delta
        out1 = layer.mlp(h)
    assert set(acts) == set(range(L))
    assert len(acts[l]) == 2 and all(len(acts[k]) == 0 for k in acts if k != l)
    a = acts[l][0]
    assert a.shape == (2, 5, DFF)
    assert torch.equal(a, acts[l][1])  # the edit does not change the down-proj input
    # independent check of a: the MLP output is the down-proj applied to a
    W, _ = vv.down_proj_weight_param(model, l)
    assert torch.allclose(out1, vv.down_projs(model)[l](a), atol=1e-12)
    expected = a[..., i:i + 1] * delta
    assert torch.allclose(out1 - out0, expected, atol=1e-12, rtol=1e-9)
    assert (out1 - out0).abs().max() > 1e-6  # the edit did something
    # exactly one value vector changed in the whole model
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [next(k for k, v in model.named_parameters() if v is W)]
    diff = (vv.value_matrix(model, l) - (before[changed[0]].T if arch == "gpt2" else before[changed[0]]))
    assert torch.allclose(diff[:, i], delta, atol=1e-12)
    diff[:, i] = 0
    assert diff.abs().max() == 0


def test_capture_in_full_forward_detach_and_graph():
    model = _build("llama")
    ids = torch.randint(0, 64, (2, 6))
    with vv.capture_down_inputs(model, layers=[0, 2]) as acts:
        model(ids)
    assert set(acts) == {0, 2}
    assert acts[0][0].shape == (2, 6, DFF) and not acts[0][0].requires_grad
    with vv.capture_down_inputs(model, layers=[2], detach=False) as acts:
        model(ids)
    a = acts[2][0]
    assert a.requires_grad
    a.sum().backward()  # graph kept: gradient reaches the layer-2 up projection
    assert vv._layers(model)[2].mlp.up_proj.weight.grad is not None
    # hooks are removed on exit
    assert all(len(m._forward_pre_hooks) == 0 for m in vv.down_projs(model))
    # hooks are removed when the block raises
    with pytest.raises(RuntimeError):
        with vv.capture_down_inputs(model):
            raise RuntimeError("boom")
    assert all(len(m._forward_pre_hooks) == 0 for m in vv.down_projs(model))


def test_unknown_architecture_is_a_user_error():
    model = tf.BertModel(tf.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32))
    with pytest.raises(UserError, match="bert.*supported model_types: .*gpt2.*llama"):
        vv.shape(model)
    with pytest.raises(UserError, match="supported"):
        vv.shape(torch.nn.Linear(2, 2))
