import pickle

import pytest
import torch
from safetensors.torch import save_file

from loc_unlearn.errors import MaskError, UserError
from loc_unlearn.masks import Mask


def rand_mask(L=3, d_ff=20, p=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(L, d_ff, generator=g) < p


def test_counts_setops_overlap_match_python_sets():
    a, b = Mask(rand_mask(seed=1)), Mask(rand_mask(seed=2))
    sa = {(l, i) for l, i in a.mask.nonzero().tolist()}
    sb = {(l, i) for l, i in b.mask.nonzero().tolist()}
    assert a.count == len(sa) and a.per_layer_counts() == [sum(1 for l, _ in sa if l == k) for k in range(3)]
    assert {tuple(x) for x in (a & b).mask.nonzero().tolist()} == sa & sb
    assert {tuple(x) for x in (a | b).mask.nonzero().tolist()} == sa | sb
    assert (~a).count == 60 - len(sa) and not ((~a).mask & a.mask).any()
    assert a.jaccard(b) == pytest.approx(len(sa & sb) / len(sa | sb))
    pr = a.precision_recall(b)
    assert pr["precision"] == pytest.approx(len(sa & sb) / len(sa))
    assert pr["recall"] == pytest.approx(len(sa & sb) / len(sb))
    assert a.precision_recall(a) == {"precision": 1.0, "recall": 1.0}
    with pytest.raises(MaskError, match="shapes differ"):
        a.jaccard(Mask(torch.zeros(2, 20, dtype=torch.bool)))


def test_save_load_roundtrip_keeps_tensor_and_typed_metadata(tmp_path):
    fp = {"architecture": "llama", "n_layers": 3, "d_ff": 20, "hidden": 8}
    meta = {"method": "random_complement", "ratio": 0.1, "scope": "global", "seed": 7,
            "source_mask": "runs/x/mask.safetensors", "fingerprint": fp}
    m = Mask(rand_mask(), meta)
    p = m.save(tmp_path / "m.safetensors")
    back = Mask.load(p, expect_shape=(3, 20))
    assert back == m and back.mask.dtype == torch.bool
    assert back.meta == meta  # types survive: float ratio, int seed, dict fingerprint
    assert isinstance(back.meta["seed"], int) and isinstance(back.meta["ratio"], float)
    back.save(tmp_path / "again.safetensors")  # re-saving a loaded mask does not add keys
    assert Mask.load(tmp_path / "again.safetensors").meta == meta


def test_wrong_shape_is_a_clear_error(tmp_path):
    p = Mask(rand_mask(3, 20)).save(tmp_path / "m.safetensors")
    with pytest.raises(MaskError, match=r"m\.safetensors.*\(3, 20\).*expected \(4, 20\)"):
        Mask.load(p, expect_shape=(4, 20))


@pytest.mark.parametrize("kind", ["pickle", "torch_save", "random_bytes", "truncated", "no_mask", "float_mask", "missing"])
def test_not_a_mask_file_is_a_mask_error(tmp_path, kind):
    p = tmp_path / f"bad_{kind}.safetensors"
    if kind == "pickle":
        p.write_bytes(pickle.dumps({"mask": [[True]]}))
    elif kind == "torch_save":
        torch.save({"mask": torch.ones(2, 3, dtype=torch.bool)}, p)
    elif kind == "random_bytes":
        p.write_bytes(torch.randint(0, 256, (500,), generator=torch.Generator().manual_seed(0)).to(torch.uint8).numpy().tobytes())
    elif kind == "truncated":
        Mask(rand_mask()).save(p)
        p.write_bytes(p.read_bytes()[:-7])
    elif kind == "no_mask":
        save_file({"weights": torch.ones(2, 3)}, str(p))
    elif kind == "float_mask":
        save_file({"mask": torch.ones(2, 3)}, str(p))
    with pytest.raises(MaskError) as e:
        Mask.load(p)
    msg = str(e.value)
    assert str(p) in msg and isinstance(e.value, UserError)
    if kind == "no_mask":
        assert "'mask'" in msg and "weights" in msg
    if kind == "float_mask":
        assert "float32" in msg and "bool" in msg


def test_constructor_rejects_non_bool():
    with pytest.raises(MaskError, match="bool"):
        Mask(torch.ones(2, 3))


def test_check_compatible_with_model(tiny_lm):
    model = tiny_lm(50, L=2, d=16, d_ff=48, heads=2, max_pos=32)
    Mask(torch.zeros(2, 48, dtype=torch.bool)).check_compatible(model)
    with pytest.raises(MaskError, match=r"\(3, 48\).*\(2, 48\)"):
        Mask(torch.zeros(3, 48, dtype=torch.bool)).check_compatible(model)
