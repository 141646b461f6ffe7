import numpy as np
import pytest
import torch

from quamba.errors import CalibrationError, InvalidArgumentError
from quamba.quantization.observers import (
    AbsMaxObserver,
    PerChannelAbsMaxObserver,
    PercentileObserver,
    abs_quantile,
    make_observer,
)


def test_absmax_hand_values():
    obs = AbsMaxObserver(name="in_proj:output")
    obs.update(torch.tensor([[0.5, -2.0], [1.0, 0.25]]))
    assert obs.value() == 2.0
    obs.update(torch.tensor([1.5, -1.75, 0.0]))
    assert obs.value() == 2.0
    obs.update(torch.tensor([[-3.0, 2.5, 0.1]], dtype=torch.float16))
    assert obs.value() == 3.0
    assert obs.scale() == pytest.approx(3.0 / 127)
    assert obs.scale(qmax=7) == pytest.approx(3.0 / 7)
    assert isinstance(obs.scale(), float)
    assert obs.num_updates == 3


def test_absmax_floors():
    obs = AbsMaxObserver()
    obs.update(torch.zeros(3, 5))
    assert obs.value() == pytest.approx(1e-5)
    assert obs.scale() == pytest.approx(1e-6)
    obs.update(torch.full((2,), 2e-5))
    assert obs.value() == pytest.approx(2e-5)
    assert obs.scale() == pytest.approx(1e-6)


def test_percentile_hand_values():
    x = torch.tensor([-4.0, 1.0, 3.0, -2.0, 0.0])
    obs = PercentileObserver(p=0.9, momentum=0.5)
    obs.update(x)
    # sorted |x| = 0 1 2 3 4; position 0.9 * 4 = 3.6 -> 3 + 0.6 * (4 - 3)
    assert obs.value() == pytest.approx(3.6)
    assert obs.scale() == pytest.approx(3.6 / 127)
    obs2 = PercentileObserver(p=0.5)
    obs2.update(torch.tensor([[10.0, -1.0], [2.0, 3.0]]))
    # sorted 1 2 3 10; position 1.5 -> 2.5
    assert obs2.value() == pytest.approx(2.5)


def test_percentile_ema_three_updates():
    obs = PercentileObserver(p=1.0, momentum=0.25, name="x_proj:input")
    obs.update(torch.tensor([1.0, -8.0]))
    assert obs.value() == pytest.approx(8.0)
    obs.update(torch.tensor([4.0, 0.5]))
    assert obs.value() == pytest.approx(8.0 + 0.25 * (4.0 - 8.0))
    obs.update(torch.tensor([-16.0]))
    assert obs.value() == pytest.approx(7.0 + 0.25 * (16.0 - 7.0))
    assert obs.scale() == pytest.approx(9.25 / 127)


def test_percentile_default_momentum():
    obs = PercentileObserver(p=1.0)
    obs.update(torch.tensor([2.0]))
    obs.update(torch.tensor([102.0]))
    assert obs.value() == pytest.approx(3.0)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.9, 0.999, 0.9995, 0.99999, 1.0])
@pytest.mark.parametrize("n", [1, 2, 7, 1001, 65537])
def test_abs_quantile_matches_numpy(p, n):
    x = torch.randn(n) * torch.rand(n) * 10
    expect = float(np.quantile(np.abs(x.numpy()).astype(np.float64), p))
    assert abs_quantile(x, p) == pytest.approx(expect, rel=1e-6, abs=1e-7)


def test_abs_quantile_matches_torch_quantile():
    x = torch.randn(3, 17, 31)
    for p in (0.3, 0.9995):
        expect = torch.quantile(x.abs().reshape(-1).double(), p).item()
        assert abs_quantile(x, p) == pytest.approx(expect, rel=1e-6)


def test_percentile_above_torch_quantile_limit():
    n = (1 << 24) + 13
    x = torch.randn(n)
    x[torch.randint(0, n, (50,))] = 300.0
    obs = PercentileObserver(p=0.9995)
    obs.update(x.view(1, -1, 1))
    expect = float(np.quantile(np.abs(x.numpy()), 0.9995))
    assert obs.value() == pytest.approx(expect, rel=1e-6)


def test_per_channel_hand_values():
    obs = PerChannelAbsMaxObserver(name="w")
    obs.update(torch.tensor([[[1.0, -2.0, 0.5]], [[-3.0, 1.0, 0.0]]]))
    assert torch.equal(obs.value(), torch.tensor([3.0, 2.0, 0.5]))
    obs.update(torch.tensor([[0.5, 4.0, -0.25], [1.0, 1.0, 1.0]]))
    assert torch.equal(obs.value(), torch.tensor([3.0, 4.0, 1.0]))
    s = obs.scale()
    assert s.dtype == torch.float32 and s.shape == (3,)
    assert torch.allclose(s, torch.tensor([3.0, 4.0, 1.0]) / 127)


def test_per_channel_other_dim_and_floor():
    obs = PerChannelAbsMaxObserver(dim=1)
    x = torch.randn(4, 5, 6)
    x[:, 2] = 0
    obs.update(x)
    expect = x.abs().amax(dim=(0, 2)).clamp_min(1e-5)
    assert torch.equal(obs.value(), expect)
    assert obs.scale()[2].item() == pytest.approx(1e-6)
    with pytest.raises(InvalidArgumentError, match="channel count"):
        obs.update(torch.randn(4, 3, 6))


def test_value_is_a_copy():
    obs = PerChannelAbsMaxObserver()
    obs.update(torch.ones(2, 3))
    obs.value().zero_()
    assert torch.equal(obs.value(), torch.ones(3))


@pytest.mark.parametrize("kind", ["absmax", "percentile", "per_channel_absmax"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_raises_with_name(kind, bad):
    obs = make_observer(kind, name="layers.3.x_proj:input")
    obs.update(torch.randn(2, 4))
    x = torch.randn(3, 4)
    x[1, 2] = bad
    with pytest.raises(CalibrationError, match="layers.3.x_proj:input"):
        obs.update(x)


@pytest.mark.parametrize("kind", ["absmax", "percentile", "per_channel_absmax"])
def test_scale_before_update_raises(kind):
    obs = make_observer(kind, name="ssm_state_act:input")
    with pytest.raises(CalibrationError, match="ssm_state_act:input"):
        obs.scale()
    with pytest.raises(CalibrationError):
        obs.value()
    with pytest.raises(CalibrationError):
        obs.update(torch.empty(0, 4))


def test_factory():
    assert isinstance(make_observer("absmax"), AbsMaxObserver)
    p = make_observer("percentile", p=0.99999, momentum=0.1, name="a")
    assert isinstance(p, PercentileObserver) and p.p == 0.99999 and p.momentum == 0.1 and p.name == "a"
    assert make_observer("per_channel_absmax", dim=0).dim == 0
    with pytest.raises(InvalidArgumentError, match="absmax"):
        make_observer("minmax")
    with pytest.raises(InvalidArgumentError):
        PercentileObserver(p=1.5)
    with pytest.raises(InvalidArgumentError):
        PercentileObserver(momentum=0.0)
