import dataclasses
import random as pyrandom

import pytest
import torch
import torch.nn.functional as F

from loc_unlearn.config import LocalizeConfig
from loc_unlearn.data.formatting import collate, encode_rows
from loc_unlearn.errors import ConfigError, MaskError, UserError
from loc_unlearn.masks import Mask
from loc_unlearn.masks.localize import LOCALIZERS, localize, score, select_topk
from loc_unlearn.masks.localize.memflex import corrupt, memflex_from_grads
from loc_unlearn.models.value_vectors import value_matrix

# ----------------------------------------------------------------------------- tiny world, tokenizer, model

SYL = ["ka", "lo", "mi", "ra", "ten", "vo", "zu", "pe", "shi", "dor", "an", "bel"]
COLORS = ["red", "blue", "green", "amber", "violet", "silver", "black", "white"]
CITIES = ["Veloria", "Ostmark", "Brin", "Calder", "Dunmore", "Esk", "Faro", "Gale"]


def world(n, seed):
    """n made-up people, two facts each, in TOFU row format."""
    r = pyrandom.Random(seed)
    rows = []
    for _ in range(n):
        name = " ".join((r.choice(SYL) + r.choice(SYL)).capitalize() for _ in range(2))
        rows.append({"question": f"Where was {name} born ?", "answer": f"{name} was born in {r.choice(CITIES)} ."})
        rows.append({"question": f"What color does {name} love ?", "answer": f"{name} loves the color {r.choice(COLORS)} ."})
    return rows


@pytest.fixture(scope="module")
def small(tiny_lm, word_tokenizer):
    retain, forget = world(12, 1), world(4, 2)
    tok = word_tokenizer(retain + forget)
    return tiny_lm(tok).eval(), tok, forget, retain


def cfg(**kw):
    return dataclasses.replace(LocalizeConfig(), **kw)


# ----------------------------------------------------------------------------- select_topk


def _reference_topk(scores, k):
    flat = scores.flatten().tolist()
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))  # ties: lower index first
    out = torch.zeros(len(flat), dtype=torch.bool)
    out[order[:k]] = True
    return out.view(scores.shape)


@pytest.mark.parametrize("ratio", [0.02, 0.1, 0.25, 0.5, 1.0])
def test_select_topk_exact_size_and_matches_reference(ratio):
    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 7, (3, 50), generator=g).float()  # many ties on purpose
    m = select_topk(s, ratio, "global")
    assert int(m.sum()) == round(ratio * 150)
    assert torch.equal(m, _reference_topk(s, round(ratio * 150)))
    pl = select_topk(s, ratio, "per_layer")
    assert pl.sum(1).tolist() == [round(ratio * 50)] * 3
    for l in range(3):
        assert torch.equal(pl[l], _reference_topk(s[l:l + 1], round(ratio * 50))[0])


def test_select_topk_ties_and_bad_ratio():
    m = select_topk(torch.zeros(2, 10), 0.2, "global")
    assert m.flatten().nonzero().flatten().tolist() == [0, 1, 2, 3]
    for bad in (0, 0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="localize.ratio"):
            select_topk(torch.zeros(2, 10), bad, "global")
    with pytest.raises(ConfigError, match="localize.ratio"):
        select_topk(torch.zeros(2, 10), 0.01, "global")  # rounds to 0 vectors
    with pytest.raises(ConfigError, match="localize.scope"):
        select_topk(torch.zeros(2, 10), 0.1, "layer")


# ----------------------------------------------------------------------------- random / random_complement


def test_random_deterministic_exact_size_and_uniform(small):
    model, tok, forget, retain = small
    a = localize(cfg(method="random", seed=4), model, tok, forget, retain)
    b = localize(cfg(method="random", seed=4), model, tok, forget, retain)
    c = localize(cfg(method="random", seed=5), model, tok, forget, retain)
    assert a == b and a != c
    assert a.count == round(0.1 * 2 * 64) and a.shape == (2, 64)
    p = localize(cfg(method="random", seed=4, scope="per_layer", ratio=0.25), model, tok, forget, retain)
    assert p.per_layer_counts() == [16, 16]
    # Uniform k-subset: over many seeds every vector is picked about `ratio` of the time.
    freq = torch.stack([localize(cfg(method="random", seed=s, ratio=0.25), model, tok, forget, retain).mask
                        for s in range(400)]).float().mean(0)
    assert abs(freq.mean().item() - 0.25) < 1e-6  # exact size every time
    assert freq.min() > 0.12 and freq.max() < 0.38  # binomial(400, .25): sd 0.022, so +-0.13 is ~6 sd


def test_random_complement_disjoint_same_size(small, tmp_path):
    model, tok, forget, retain = small
    src = localize(cfg(method="random", seed=1, ratio=0.3), model, tok, forget, retain)
    path = src.save(tmp_path / "src.safetensors")
    comp = localize(cfg(method="random_complement", seed=2, source_mask=str(path)), model, tok, forget, retain)
    assert comp.count == src.count and not (comp.mask & src.mask).any()
    assert comp.meta["source_mask"] == str(path) and comp.meta["ratio"] == pytest.approx(src.ratio)
    again = localize(cfg(method="random_complement", seed=2, source_mask=str(path)), model, tok, forget, retain)
    assert again == comp
    pl = localize(cfg(method="random_complement", seed=2, source_mask=str(path), scope="per_layer"),
                  model, tok, forget, retain)
    assert pl.per_layer_counts() == src.per_layer_counts() and not (pl.mask & src.mask).any()


def test_random_complement_errors(small, tmp_path):
    model, tok, forget, retain = small
    with pytest.raises(ConfigError, match="localize.source_mask"):
        localize(cfg(method="random_complement"), model, tok, forget, retain)
    big = Mask(torch.ones(2, 64, dtype=torch.bool).index_fill_(1, torch.arange(10), False)).save(tmp_path / "big.safetensors")
    with pytest.raises(MaskError, match="too small"):
        localize(cfg(method="random_complement", source_mask=str(big)), model, tok, forget, retain)
    wrong = Mask(torch.zeros(3, 64, dtype=torch.bool)).save(tmp_path / "wrong.safetensors")
    with pytest.raises(MaskError, match="wrong.safetensors"):
        localize(cfg(method="random_complement", source_mask=str(wrong)), model, tok, forget, retain)


def test_unknown_method_lists_known(small):
    model, tok, forget, retain = small
    with pytest.raises(UserError, match="activation.*memflex.*random.*wagle"):
        localize(cfg(method="magic"), model, tok, forget, retain)


def test_metadata_roundtrip_from_localize(small, tmp_path):
    model, tok, forget, retain = small
    m = localize(cfg(method="activation", ratio=0.2, scope="per_layer", seed=9), model, tok, forget, retain)
    back = Mask.load(m.save(tmp_path / "a.safetensors"), expect_shape=(2, 64))
    assert back == m
    assert back.meta == {"method": "activation", "ratio": 0.2, "scope": "per_layer", "seed": 9, "source_mask": "",
                         "fingerprint": {"architecture": "llama", "n_layers": 2, "d_ff": 64, "hidden": 32}}


# ----------------------------------------------------------------------------- hand-checked scores


def _answer_token_grads(model, tok, rows):
    """Independent: per-example (unbatched, unpadded) NLL over answer+eos tokens, autograd over the
    FULL model (every parameter requires grad), summed and divided by the total token count."""
    items = encode_rows(tok, rows, 256)
    model.zero_grad()
    for p in model.parameters():
        p.requires_grad_(True)
    total, n = 0.0, 0
    for it in items:
        ids = torch.tensor([it["input_ids"]])
        logits = model(input_ids=ids).logits[0]
        lo = it["n_prompt"]
        total = total + F.cross_entropy(logits[lo - 1:-1], ids[0, lo:], reduction="sum")
        n += ids.shape[1] - lo
    L = model.config.num_hidden_layers
    ws = [model.model.layers[l].mlp.down_proj.weight for l in range(L)]
    return [g / n for g in torch.autograd.grad(total, ws)]


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, {n: p.requires_grad for n, p in model.named_parameters()}


def _assert_unchanged(model, snap):
    sd, flags = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_activation_score_matches_hand_computation(small):
    model, tok, forget, retain = small
    # Independent a^l: hook the MLP input x and compute act(gate(x)) * up(x) ourselves, per example.
    L = model.config.num_hidden_layers
    sums, n = torch.zeros(L, 64, dtype=torch.float64), 0
    xs = {}
    hooks = [model.model.layers[l].mlp.register_forward_pre_hook(lambda m, a, l=l: xs.__setitem__(l, a[0]))
             for l in range(L)]
    with torch.no_grad():
        for it in encode_rows(tok, forget, 256):
            model(input_ids=torch.tensor([it["input_ids"]]))
            lo, na = it["n_prompt"], it["n_answer"]
            for l in range(L):
                mlp = model.model.layers[l].mlp
                a = (F.silu(mlp.gate_proj(xs[l])) * mlp.up_proj(xs[l]))[0]
                sums[l] += a[lo - 1: lo - 1 + na].double().sum(0)  # positions predicting answer tokens (not eos)
            n += na
    for h in hooks:
        h.remove()
    norms = torch.stack([model.model.layers[l].mlp.down_proj.weight.double().norm(dim=0) for l in range(L)])
    expect = (sums / n).abs() * norms
    snap = _snapshot(model)
    got = score("activation", model, tok, forget, retain, cfg(batch_size=3))
    _assert_unchanged(model, snap)
    torch.testing.assert_close(got.double(), expect, rtol=1e-4, atol=1e-7)


def test_gradient_and_wagle_match_full_model_autograd(small):
    model, tok, forget, retain = small
    model.model.embed_tokens.weight.requires_grad_(False)  # a caller's flag must survive scoring
    snap = _snapshot(model)
    got_g = score("gradient", model, tok, forget, retain, cfg(batch_size=3))
    got_w = score("wagle", model, tok, forget, retain, cfg(batch_size=5, params={"wagle_gamma": 1e-3}))
    _assert_unchanged(model, snap)
    gf = _answer_token_grads(model, tok, forget)
    gr = _answer_token_grads(model, tok, retain)
    model.zero_grad(set_to_none=True)
    model.model.embed_tokens.weight.requires_grad_(True)
    torch.testing.assert_close(got_g, torch.stack([g.norm(dim=0) for g in gf]), rtol=1e-4, atol=1e-8)
    thetas = [model.model.layers[l].mlp.down_proj.weight.detach() for l in range(2)]
    expect_w = torch.stack([((t - r / 1e-3) * f).abs().sum(0) for t, f, r in zip(thetas, gf, gr)])
    torch.testing.assert_close(got_w, expect_w, rtol=1e-4, atol=1e-8)
    # Batch size does not change the scores (token-weighted mean over the whole set).
    torch.testing.assert_close(score("gradient", model, tok, forget, retain, cfg(batch_size=1)), got_g, rtol=1e-5, atol=1e-9)


def test_memflex_candidates_then_fill_by_lowest_cos():
    # One layer, d=2, four value vectors with known cos / mean|g_forget|:
    gf = torch.tensor([[1.0, 3.0, 0.2, 1.0], [0.0, 0.0, 0.0, 1.0]])
    gr = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.9]])
    # cos: [1, 0, 0, 0.9986]; candidates (cos < 0.92): 1 (m=1.5) and 2 (m=0.1); fill: 3 (lower cos) before 0.
    s = memflex_from_grads([gf], [gr], 0.92)
    pick = lambda k: select_topk(s, 1.0, "global", k=k)[0].nonzero().flatten().tolist()
    assert pick(1) == [1] and pick(2) == [1, 2] and pick(3) == [1, 2, 3] and pick(4) == [0, 1, 2, 3]
    # A looser threshold admits vector 3 as a candidate, where it outranks 2 by magnitude (m=1.0 > 0.1).
    assert select_topk(memflex_from_grads([gf], [gr], 0.9999), 1.0, "global", k=2)[0].nonzero().flatten().tolist() == [1, 3]


def test_memflex_corruption(small):
    _, tok, forget, _ = small
    items = encode_rows(tok, forget, 256)
    vocab = list(range(3, len(tok)))
    c = corrupt(items, 3, vocab, seed=0)
    assert len(c) == 3 * len(items) and c == corrupt(items, 3, vocab, seed=0) and c != corrupt(items, 3, vocab, seed=1)
    changed = total = 0
    for j, it in enumerate(c):
        orig = items[j // 3]
        lo, hi = orig["n_prompt"], orig["n_prompt"] + orig["n_answer"]
        assert it["input_ids"][:lo] == orig["input_ids"][:lo] and it["input_ids"][hi:] == orig["input_ids"][hi:]
        assert it["labels"][lo:] == it["input_ids"][lo:] and it["labels"][:lo] == orig["labels"][:lo]
        changed += sum(a != b for a, b in zip(it["input_ids"][lo:hi], orig["input_ids"][lo:hi]))
        total += hi - lo
    assert 0.3 < changed / total < 0.6  # about half replaced (a replacement may draw the same token)


def test_memflex_runs_deterministic_and_leaves_model(small):
    model, tok, forget, retain = small
    snap = _snapshot(model)
    a = localize(cfg(method="memflex", seed=1), model, tok, forget, retain)
    _assert_unchanged(model, snap)
    assert a == localize(cfg(method="memflex", seed=1), model, tok, forget, retain) and a.count == 13


# ----------------------------------------------------------------------------- known ground truth


def _train(model, tok, rows, steps, lr, params, colmask=None, seed=0):
    items = encode_rows(tok, rows, 64)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)  # no decay: it would move unmasked weights
    r = pyrandom.Random(seed)
    model.train()
    for _ in range(steps):
        b = collate(r.sample(items, min(16, len(items))), tok.pad_token_id)
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        opt.zero_grad()
        loss.backward()
        if colmask is not None:
            for l, w in enumerate(params):
                w.grad[:, ~colmask[l]] = 0
        opt.step()
    model.eval()
    return loss.item()


def test_methods_recover_injected_value_vectors(capsys, tiny_lm, word_tokenizer):
    """Write new facts into a CHOSEN 10% of value vectors only, then ask each method to find them."""
    retain, forget = world(40, 1), world(10, 2)
    tok = word_tokenizer(retain + forget)
    L, d_ff, ratio = 4, 256, 0.1
    model = tiny_lm(tok, L=L, d=64, d_ff=d_ff).eval()
    torch.manual_seed(0)
    _train(model, tok, retain, 150, 3e-3, list(model.parameters()))  # "theta_r": knows the retain facts
    target = select_topk(torch.rand(L, d_ff, generator=torch.Generator().manual_seed(5)), ratio, "global")
    for p in model.parameters():
        p.requires_grad_(False)
    ws = [value_matrix(model, l) for l in range(L)]
    for w in ws:
        w.requires_grad_(True)
    before = [w.detach().clone() for w in ws]
    loss = _train(model, tok, forget + pyrandom.Random(3).sample(retain, 20), 300, 1e-2, ws, target)
    for p in model.parameters():
        p.requires_grad_(True)
    changed = torch.stack([(w.detach() != b).any(0) for w, b in zip(ws, before)])
    assert torch.equal(changed, target) and loss < 0.5  # facts written into exactly the chosen vectors

    prec = {}
    for m in ["random", "activation", "gradient", "wagle", "memflex"]:
        got = localize(cfg(method=m, ratio=ratio, batch_size=16), model, tok, forget, retain)
        assert got.count == round(ratio * L * d_ff)
        prec[m] = got.precision_recall(target)["precision"]
    with capsys.disabled():
        print("\nprecision at recovering the injected 10% (chance = 0.10): "
              + ", ".join(f"{k} {v:.3f}" for k, v in prec.items()))
    assert abs(prec["random"] - ratio) < 0.1
    assert prec["activation"] > ratio + 0.3  # |mean a| * ||v||: injected columns grew in norm
    # Gradient-type scores are NOT asserted above chance: in layer l, column i's gradient is
    # sum_t a_i(t) delta(t), where neither a_i (input of W_down) nor delta depends on which columns
    # were trained, so a random target region leaves no first-order trace in them (measured ~chance).
    for m in ("gradient", "wagle", "memflex"):
        assert 0.0 <= prec[m] <= 1.0


def test_random_layer_matched_copies_per_layer_counts(tmp_path, tiny_lm):
    model = tiny_lm(20, L=3, d_ff=64, pad_token_id=0, eos_token_id=1, bos_token_id=2).eval()
    src = torch.zeros(3, 64, dtype=torch.bool)
    src[0, :15] = True
    src[2, 10:13] = True
    path = tmp_path / "src.safetensors"
    Mask(src, {"method": "activation"}).save(path)
    cfg = LocalizeConfig(method="random_layer_matched", source_mask=str(path), seed=3)
    a = localize(cfg, model, None, [], [])
    b = localize(cfg, model, None, [], [])
    c = localize(dataclasses.replace(cfg, seed=4), model, None, [], [])
    assert a.per_layer_counts() == [15, 0, 3] and torch.equal(a.mask, b.mask) and not torch.equal(a.mask, c.mask)
    assert not torch.equal(a.mask, src) and a.meta["source_mask"] == str(path) and a.meta["scope"] == "per_layer"
    with pytest.raises(ConfigError, match="localize.source_mask"):
        localize(dataclasses.replace(cfg, source_mask=""), model, None, [], [])
