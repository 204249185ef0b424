"""AUES / MU95 / mixing against hand-computed curves (docs/metrics.md)."""
import math

import pytest
import torch

from loc_unlearn.errors import UserError
from loc_unlearn.evaluate.tradeoff import aues, mix_state_dicts, mu95, pareto_envelope, summarize_trajectory


def test_aues_monotone_by_hand():
    # (0.2,0.9) (0.6,0.7) (1.0,0.3); anchor (0,0.9):
    # 0.2*0.9 + 0.4*(0.9+0.7)/2 + 0.4*(0.7+0.3)/2 = 0.18 + 0.32 + 0.20 = 0.70
    assert aues([0.2, 0.6, 1.0], [0.9, 0.7, 0.3]) == pytest.approx(0.70)
    # input order must not matter
    assert aues([1.0, 0.2, 0.6], [0.3, 0.9, 0.7]) == pytest.approx(0.70)
    # no anchor: area only from FS=0.2 on
    assert aues([0.2, 0.6, 1.0], [0.9, 0.7, 0.3], left_anchor=False) == pytest.approx(0.52)


def test_aues_envelope_drops_dominated_point():
    fs = [0.2, 0.5, 0.6, 1.0]
    rs = [0.9, 0.4, 0.7, 0.3]  # (0.5,0.4) is dominated by (0.6,0.7)
    assert pareto_envelope(list(zip(fs, rs))) == [(0.2, 0.9), (0.6, 0.7), (1.0, 0.3)]
    assert aues(fs, rs) == pytest.approx(0.70)
    # without the envelope the dip counts: 0.18 + 0.3*(0.9+0.4)/2 + 0.1*(0.4+0.7)/2 + 0.20
    assert aues(fs, rs, envelope=False) == pytest.approx(0.18 + 0.195 + 0.055 + 0.20)
    assert aues(fs, rs, envelope=False) < aues(fs, rs)


def test_aues_non_monotone_and_duplicates():
    # trajectory goes forward then back: (0.3,0.8) revisited; (0.1,0.8) dominated by (0.3,0.8)
    fs = [0.1, 0.3, 0.8, 0.3]
    rs = [0.8, 0.8, 0.5, 0.8]
    # envelope (0.3,0.8),(0.8,0.5); anchor (0,0.8): 0.3*0.8 + 0.5*(1.3)/2 = 0.24 + 0.325
    assert aues(fs, rs) == pytest.approx(0.565)
    assert 0.0 <= aues(fs, rs) <= 1.0
    with pytest.raises(UserError):
        aues([0.1], [0.2, 0.3])


def test_mu95_first_crossing_interpolated():
    mu = [0.50, 0.49, 0.46, 0.40]
    lfq = [-20.0, -15.0, -10.0, -5.0]
    # thr = 0.475; crossing between 0.49 and 0.46: t = (0.49-0.475)/0.03 = 0.5 -> -12.5
    v, nr = mu95(mu, lfq)
    assert not nr and v == pytest.approx(-12.5)
    # non-monotone MU: the FIRST crossing counts even if MU recovers later
    v, nr = mu95([0.5, 0.44, 0.49, 0.30], [-20, -10, -8, -2])
    # between (0.5,-20) and (0.44,-10): t = 0.025/0.06
    assert v == pytest.approx(-20 + 0.025 / 0.06 * 10) and not nr


def test_mu95_never_crossing_and_best():
    v, nr = mu95([0.5, 0.49, 0.48], [-20, -12, -9])
    assert nr and v == -9
    v, nr = mu95([0.5, 0.49, 0.40, 0.48], [-20, -12, -3, -9], mode="best")
    assert v == -9 and not nr  # -3 is at MU below 0.475 and is excluded
    with pytest.raises(UserError):
        mu95([0.5], [-1], mode="bogus")


def test_summarize_trajectory():
    pts = [dict(FS=0.2, RS=0.9, MU=0.5, log10_FQ=-20.0), dict(FS=0.6, RS=0.7, MU=0.49, log10_FQ=-15.0),
           dict(FS=1.0, RS=0.3, MU=0.46, log10_FQ=-10.0)]
    s = summarize_trajectory(pts)
    assert s["aues"] == pytest.approx(0.70)
    assert s["mu95"] == pytest.approx(-15 + (0.49 - 0.475) / 0.03 * 5) and s["mu95_not_reached"] is False
    pts[1]["log10_FQ"] = None
    assert summarize_trajectory(pts)["mu95"] is None


def test_mix_state_dicts():
    torch.manual_seed(0)
    sd0 = {"w": torch.randn(3, 4), "n": torch.tensor([1, 2])}
    sdK = {"w": torch.randn(3, 4), "n": torch.tensor([1, 2])}
    assert torch.equal(mix_state_dicts(sd0, sdK, 0.0)["w"], sd0["w"])
    assert torch.allclose(mix_state_dicts(sd0, sdK, 1.0)["w"], sdK["w"])
    m = mix_state_dicts(sd0, sdK, 0.3)["w"]
    assert torch.allclose(m, 0.7 * sd0["w"] + 0.3 * sdK["w"], atol=1e-6)
    bf = mix_state_dicts({"w": sd0["w"].bfloat16()}, {"w": sdK["w"].bfloat16()}, 0.5)["w"]
    assert bf.dtype == torch.bfloat16
    with pytest.raises(UserError):
        mix_state_dicts(sd0, {"w": sdK["w"]}, 0.5)
