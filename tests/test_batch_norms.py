"""The BatchNorm variants (Ghost BN, frozen BN, Batch Renorm, Batch-Channel Norm) against
their papers' definitions, written out by hand or as torch's own BatchNorm / GroupNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.errors import ConfigError
from bench.zoo.norms.batch import BatchChannelNorm, BatchRenorm, EstimatedBatchNorm, FrozenBatchNorm, GhostBatchNorm
from bench.zoo.norms import NORMS, NormFactory
from bench.zoo.norms.batch import RenormSchedule

EPS = 1e-5
VARIANTS = ("bn-ghost", "bn-frozen", "brn", "bcn")
LAYERS = {"bn-ghost": GhostBatchNorm, "bn-frozen": FrozenBatchNorm, "brn": BatchRenorm, "bcn": BatchChannelNorm}


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(6, 8, 5, 5, dtype=torch.float64) * 3 + 1


def _randomize_affine(*layers: nn.Module, seed: int = 1) -> None:
    """Give every layer the same random γ, β (layers of one shape)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(layers[0].weight.shape, generator=g, dtype=torch.float64)
    bias = torch.randn(layers[0].bias.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)


def _cv(t: torch.Tensor, ndim: int = 4) -> torch.Tensor:
    return t.view((1, -1) + (1,) * (ndim - 2))


def _dims(ndim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, ndim))


def _grads(layer: nn.Module, x: torch.Tensor, seed: int = 2) -> tuple[torch.Tensor, ...]:
    """Output and gradients w.r.t. input, γ and β of a fixed non-trivial loss."""
    inp = x.clone().requires_grad_()
    out = layer(inp)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * g).sum().backward()
    return out.detach(), inp.grad, layer.weight.grad, layer.bias.grad


# -- registry ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_listed_with_description_paper_and_batch_tag(name):
    entry = NORMS.entry(name)
    assert entry.description and entry.paper and "arXiv:" in entry.paper
    assert "batch" in entry.tags
    assert isinstance(NormFactory.of(name, norm_groups=4)(8), LAYERS[name])


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dims", [1, 2])
def test_no_affine_means_no_parameters(name, dims):
    layer = NormFactory.of(name, norm_groups=4, norm_affine=False)(8, dims=dims)
    assert list(layer.parameters()) == []
    assert layer.is_bench_norm


@pytest.mark.parametrize("name", VARIANTS)
def test_vector_features_forward_and_backward(name):
    v = (torch.randn(16, 12, dtype=torch.float64) * 2 + 3).requires_grad_()
    layer = NormFactory.of(name, norm_groups=3, norm_virtual_batch=4)(12, dims=1).double().train()
    out = layer(v)
    out.square().sum().backward()
    assert out.shape == v.shape and torch.isfinite(v.grad).all()
    layer.eval()
    assert layer(v[:1]).shape == (1, 12)


# -- Ghost BatchNorm ---------------------------------------------------------------------


@pytest.mark.parametrize("virtual_batch", [None, 6])
@pytest.mark.parametrize("dims", [1, 2])
def test_ghost_with_whole_batch_equals_batchnorm(x, virtual_batch, dims):
    data = x if dims == 2 else x[:, :, 0, 0].contiguous()
    ghost = NormFactory.of("bn-ghost", norm_virtual_batch=virtual_batch, norm_momentum=0.3)(8, dims=dims).double().train()
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(8, eps=EPS, momentum=0.3).double().train()
    _randomize_affine(ghost, bn)
    for got, expected in zip(_grads(ghost, data), _grads(bn, data)):
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(ghost.running_mean, bn.running_mean)
    torch.testing.assert_close(ghost.running_var, bn.running_var)
    assert int(ghost.num_batches_tracked) == 1
    ghost.eval(), bn.eval()
    torch.testing.assert_close(ghost(data), bn(data))


@pytest.mark.parametrize("virtual_batch", [1, 2, 3])
def test_ghost_equals_batchnorm_on_each_virtual_batch(x, virtual_batch):
    ghost = NormFactory.of("bn-ghost", norm_virtual_batch=virtual_batch, norm_momentum=0.3)(8).double().train()
    chunks = x.split(virtual_batch)
    bns = [nn.BatchNorm2d(8, eps=EPS, momentum=0.3).double().train() for _ in chunks]
    _randomize_affine(ghost, *bns)

    out, x_grad, w_grad, b_grad = _grads(ghost, x)
    inputs = [c.clone().requires_grad_() for c in chunks]
    ref = torch.cat([bn(c) for bn, c in zip(bns, inputs)])
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=ref.dtype)
    (ref * g).sum().backward()

    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(x_grad, torch.cat([c.grad for c in inputs]))
    torch.testing.assert_close(w_grad, sum(bn.weight.grad for bn in bns))
    torch.testing.assert_close(b_grad, sum(bn.bias.grad for bn in bns))
    # running statistics: the mean of what each virtual batch's BatchNorm would keep
    torch.testing.assert_close(ghost.running_mean, torch.stack([bn.running_mean for bn in bns]).mean(0))
    torch.testing.assert_close(ghost.running_var, torch.stack([bn.running_var for bn in bns]).mean(0))


def test_ghost_virtual_batches_differ_from_whole_batch(x):
    whole = NormFactory("bn-ghost")(8).double()
    ghost = NormFactory.of("bn-ghost", norm_virtual_batch=2)(8).double()
    assert not torch.allclose(whole(x), ghost(x))


def test_ghost_eval_is_batchnorm_with_running_statistics(x):
    ghost = NormFactory.of("bn-ghost", norm_virtual_batch=2)(8).double()
    _randomize_affine(ghost)
    ghost(x)
    ghost(x * 2 - 1)
    ghost.eval()
    stats = (ghost.running_mean.clone(), ghost.running_var.clone())
    expected = (x - _cv(stats[0])) / torch.sqrt(_cv(stats[1]) + EPS) * _cv(ghost.weight) + _cv(ghost.bias)
    torch.testing.assert_close(ghost(x), expected)
    torch.testing.assert_close((ghost.running_mean, ghost.running_var), stats)


def test_ghost_state_dict_loads_into_batchnorm(x):
    ghost = NormFactory.of("bn-ghost", norm_virtual_batch=3)(8).double()
    _randomize_affine(ghost)
    ghost(x)
    bn = nn.BatchNorm2d(8, eps=EPS).double()
    bn.load_state_dict(ghost.state_dict())
    torch.testing.assert_close(ghost.eval()(x), bn.eval()(x))


def test_ghost_batch_not_a_multiple_of_the_virtual_batch_is_refused(x):
    ghost = NormFactory.of("bn-ghost", norm_virtual_batch=4)(8).double()
    with pytest.raises(ConfigError, match=r"batch of 6 examples.*norm_virtual_batch=4.*1, 2, 3, 6"):
        ghost(x)


def test_ghost_one_example_per_virtual_batch_needs_spatial_features():
    with pytest.raises(ConfigError, match="norm_virtual_batch=1 on vector features"):
        NormFactory.of("bn-ghost", norm_virtual_batch=1)(8, dims=1)
    with pytest.raises(ConfigError, match="norm_virtual_batch ≥ 1"):
        NormFactory.of("bn-ghost", norm_virtual_batch=0)(8)
    ghost = NormFactory.of("bn-ghost", norm_virtual_batch=1)(8)
    with pytest.raises(ConfigError, match="only 1 value per channel"):
        ghost(torch.randn(4, 8, 1, 1))


# -- frozen BatchNorm --------------------------------------------------------------------


def _frozen_with_statistics(seed: int = 3) -> FrozenBatchNorm:
    frozen = NormFactory("bn-frozen")(8).double().train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        frozen.running_mean.copy_(torch.randn(8, generator=g, dtype=torch.float64))
        frozen.running_var.copy_(torch.rand(8, generator=g, dtype=torch.float64) * 3 + 0.1)
    _randomize_affine(frozen)
    return frozen


@pytest.mark.parametrize("train", [True, False])
def test_frozen_normalizes_with_running_statistics_and_never_updates_them(x, train):
    frozen = _frozen_with_statistics().train(train)
    mean, var = frozen.running_mean.clone(), frozen.running_var.clone()
    inv = 1 / torch.sqrt(var + EPS)
    out, x_grad, w_grad, b_grad = _grads(frozen, x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    torch.testing.assert_close(out, (x - _cv(mean)) * _cv(inv) * _cv(frozen.weight) + _cv(frozen.bias))
    torch.testing.assert_close(x_grad, g * _cv(inv * frozen.weight.detach()))
    torch.testing.assert_close(w_grad, (g * (x - _cv(mean)) * _cv(inv)).sum(dim=(0, 2, 3)))
    torch.testing.assert_close(b_grad, g.sum(dim=(0, 2, 3)))
    frozen(x * 5 + 2)
    assert torch.equal(frozen.running_mean, mean) and torch.equal(frozen.running_var, var)


def test_frozen_from_scratch_is_a_per_channel_affine(x):
    frozen = NormFactory("bn-frozen")(8).double().train()
    _randomize_affine(frozen)
    expected = x / (1 + EPS) ** 0.5 * _cv(frozen.weight) + _cv(frozen.bias)
    torch.testing.assert_close(frozen(x), expected)
    plain = NormFactory.of("bn-frozen", norm_affine=False)(8, dims=1).double()
    v = x[:, :, 0, 0]
    torch.testing.assert_close(plain(v), v / (1 + EPS) ** 0.5)


def test_frozen_takes_a_trained_batchnorm_statistics(x):
    bn = nn.BatchNorm2d(8, eps=EPS, momentum=1.0).double()
    _randomize_affine(bn)
    bn(x * 2 + 1)
    bn.eval()
    loaded = NormFactory("bn-frozen")(8).double()
    loaded.load_state_dict(bn.state_dict())  # num_batches_tracked is accepted and ignored
    copied = FrozenBatchNorm.from_batch_norm(bn)
    for frozen in (loaded, copied):
        torch.testing.assert_close(frozen.train()(x), bn(x))


# -- Batch Renormalization ---------------------------------------------------------------


def _renorm(schedule: RenormSchedule, momentum: float = 0.1, dims: int = 2) -> BatchRenorm:
    return NormFactory.of(
        "brn", norm_momentum=momentum, renorm_rmax=schedule.rmax, renorm_dmax=schedule.dmax,
        renorm_start=schedule.start, renorm_rmax_at=schedule.rmax_at, renorm_dmax_at=schedule.dmax_at,
    )(8, dims=dims).double().train()


def _set_moving(layer: BatchRenorm, seed: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.running_mean.copy_(torch.randn(8, generator=g, dtype=torch.float64) * 2)
        layer.running_std.copy_(torch.rand(8, generator=g, dtype=torch.float64) * 5 + 0.5)
    return layer.running_mean.clone(), layer.running_std.clone()


def _set_steps(layer: BatchRenorm, steps: int) -> None:
    state = layer.state_dict()
    state["num_steps"] = torch.tensor(steps)
    layer.load_state_dict(state)


def _renorm_reference(
    x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, r_max: float, d_max: float, detach: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x̂ of Ioffe 2017, Alg. 1, and its r, d; ``detach=False`` lets gradient through r, d."""
    dims = _dims(x.dim())
    mu_b = x.mean(dim=dims)
    sigma_b = torch.sqrt(x.var(dim=dims, unbiased=False) + EPS)
    r = torch.clamp(sigma_b / sigma, 1 / r_max, r_max)
    d = torch.clamp((mu_b - mu) / sigma, -d_max, d_max)
    if detach:
        r, d = r.detach(), d.detach()
    n = x.dim()
    return (x - _cv(mu_b, n)) / _cv(sigma_b, n) * _cv(r, n) + _cv(d, n), r, d


@pytest.mark.parametrize("dims", [1, 2])
def test_renorm_with_rmax_1_and_dmax_0_is_exactly_batchnorm(x, dims):
    data = x if dims == 2 else x[:, :, 0, 0].contiguous()
    brn = _renorm(RenormSchedule(), dims=dims)  # step 0 ≤ start: r_max = 1, d_max = 0
    _set_moving(brn)  # moving statistics far from the batch's: r, d would matter if not clipped
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(8, eps=EPS).double().train()
    _randomize_affine(brn, bn)
    assert brn.schedule.bounds(brn.steps) == (1.0, 0.0)
    for got, expected in zip(_grads(brn, data), _grads(bn, data)):
        torch.testing.assert_close(got, expected)


def test_renorm_relaxed_matches_the_equations_with_r_and_d_clipped(x):
    r_max, d_max = 1.5, 0.5
    brn = _renorm(RenormSchedule(rmax=r_max, dmax=d_max, start=0, rmax_at=1, dmax_at=1))
    mu, sigma = _set_moving(brn)
    _set_steps(brn, 10)
    _randomize_affine(brn)
    assert brn.schedule.bounds(brn.steps) == (r_max, d_max)

    inp = x.clone().requires_grad_()
    gamma, beta = brn.weight.detach().clone().requires_grad_(), brn.bias.detach().clone().requires_grad_()
    x_hat, r, d = _renorm_reference(inp, mu, sigma, r_max, d_max)
    expected = x_hat * _cv(gamma) + _cv(beta)
    # the case exercises both sides of each clip
    assert ((r == r_max) | (r == 1 / r_max)).any() and ((r > 1 / r_max) & (r < r_max)).any()
    assert (d.abs() == d_max).any() and (d.abs() < d_max).any()

    out, x_grad, w_grad, b_grad = _grads(brn, x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    (expected * g).sum().backward()
    torch.testing.assert_close(out, expected.detach())
    torch.testing.assert_close(x_grad, inp.grad)
    torch.testing.assert_close(w_grad, gamma.grad)
    torch.testing.assert_close(b_grad, beta.grad)


def test_renorm_r_and_d_carry_no_gradient(x):
    """Treating r and d as constants gives the layer's input gradient; letting gradient
    flow through them (the non-stop-gradient variant) does not."""
    brn = _renorm(RenormSchedule(rmax=4.0, dmax=3.0, start=0, rmax_at=1, dmax_at=1))
    with torch.no_grad():  # moving statistics close to the batch's, so r and d are inside their clips
        brn.running_mean.copy_(x.mean(dim=(0, 2, 3)) + 0.3)
        brn.running_std.copy_(x.std(dim=(0, 2, 3)) * 1.2)
    mu, sigma = brn.running_mean.clone(), brn.running_std.clone()
    _set_steps(brn, 10)
    _, x_grad, _, _ = _grads(brn, x)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)

    def input_grad(detach: bool) -> torch.Tensor:
        inp = x.clone().requires_grad_()
        x_hat, r, d = _renorm_reference(inp, mu, sigma, 4.0, 3.0, detach=detach)
        assert ((r > 1 / 4) & (r < 4)).all() and (d.abs() < 3).all()
        (x_hat * g).sum().backward()
        return inp.grad

    torch.testing.assert_close(x_grad, input_grad(detach=True))
    assert not torch.allclose(x_grad, input_grad(detach=False))


def test_renorm_moving_averages_and_step_count(x):
    brn = _renorm(RenormSchedule(rmax=2.0, dmax=1.0, start=0, rmax_at=1, dmax_at=1), momentum=0.25)
    mu, sigma = _set_moving(brn)
    brn(x)
    mu_b = x.mean(dim=(0, 2, 3))
    sigma_b = torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False) + EPS)
    torch.testing.assert_close(brn.running_mean, mu + 0.25 * (mu_b - mu))
    torch.testing.assert_close(brn.running_std, sigma + 0.25 * (sigma_b - sigma))
    assert brn.steps == 1 and int(brn.num_steps) == 1
    brn(x)
    assert brn.steps == 2 and int(brn.num_steps) == 2


def test_renorm_eval_uses_moving_mean_and_std_without_updating(x):
    brn = _renorm(RenormSchedule())
    mu, sigma = _set_moving(brn)
    _randomize_affine(brn)
    brn.eval()
    expected = (x - _cv(mu)) / _cv(sigma) * _cv(brn.weight) + _cv(brn.bias)
    torch.testing.assert_close(brn(x), expected)
    torch.testing.assert_close((brn.running_mean, brn.running_std), (mu, sigma))
    assert brn.steps == 0 and int(brn.num_steps) == 0


def test_renorm_schedule_bounds():
    s = RenormSchedule(rmax=3.0, dmax=5.0, start=4, rmax_at=12, dmax_at=8)
    assert s.bounds(0) == (1.0, 0.0)
    assert s.bounds(4) == (1.0, 0.0)  # plain BatchNorm up to and including `start`
    assert s.bounds(6) == pytest.approx((1.5, 2.5))  # a quarter of the way to r_max, half way to d_max
    assert s.bounds(8) == pytest.approx((2.0, 5.0))  # d_max reached at dmax_at
    assert s.bounds(12) == pytest.approx((3.0, 5.0))
    assert s.bounds(1000) == pytest.approx((3.0, 5.0))


def test_renorm_layer_follows_the_schedule_by_training_forward_passes(x):
    """With moving statistics far from the batch's, r and d sit at their bounds, so each
    output shows the (r_max, d_max) the layer used: those of the passes it ran before."""
    schedule = RenormSchedule(rmax=3.0, dmax=5.0, start=2, rmax_at=6, dmax_at=4)
    brn = _renorm(schedule, momentum=0.0)
    with torch.no_grad():
        brn.running_mean.fill_(-100.0)  # d = +d_max
        brn.running_std.fill_(1e-3)  # r = r_max
    mu_b = x.mean(dim=(0, 2, 3))
    sigma_b = torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False) + EPS)
    normalized = (x - _cv(mu_b)) / _cv(sigma_b)
    for step in range(9):
        if step == 3:
            brn.eval()(x)  # eval passes do not count
            brn.train()
        r_max, d_max = schedule.bounds(step)
        torch.testing.assert_close(brn(x), normalized * r_max + d_max)
    restored = _renorm(schedule, momentum=0.0)
    restored.load_state_dict(brn.state_dict())
    assert restored.steps == 9
    torch.testing.assert_close(restored(x), normalized * 3.0 + 5.0)


# -- Batch-Channel Normalization ---------------------------------------------------------


def _bcn(groups: int = 4, momentum: float = 0.2, dims: int = 2, seed: int = 6) -> BatchChannelNorm:
    """A BCN layer with random estimates and random affines in both steps."""
    bcn = NormFactory.of("bcn", norm_groups=groups, norm_momentum=momentum)(8, dims=dims).double().train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bcn.bn.running_mean.copy_(torch.randn(8, generator=g, dtype=torch.float64))
        bcn.bn.running_var.copy_(torch.rand(8, generator=g, dtype=torch.float64) * 4 + 0.2)
    _randomize_affine(bcn.bn, seed=seed + 1)
    _randomize_affine(bcn, seed=seed + 2)
    return bcn


def _bcn_reference(
    x: torch.Tensor, bcn: BatchChannelNorm, mean_est: torch.Tensor, var_est: torch.Tensor, training: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two steps written out: estimates moved toward the batch (spread about the old
    mean), normalization with the new estimates, then per-sample group normalization with
    a per-group affine. Returns the output and the updated estimates."""
    n, c, a = x.dim(), x.shape[1], bcn.bn.momentum
    if training:
        dims = _dims(n)
        with torch.no_grad():
            batch_mean = x.mean(dim=dims)
            spread = ((x - _cv(mean_est, n)) ** 2).mean(dim=dims)
            mean_est = (1 - a) * mean_est + a * batch_mean
            var_est = (1 - a) * var_est + a * spread
    z = (x - _cv(mean_est, n)) / torch.sqrt(_cv(var_est, n) + EPS) * _cv(bcn.bn.weight, n) + _cv(bcn.bn.bias, n)
    zg = z.reshape(x.shape[0], bcn.groups, -1)
    mean = zg.mean(dim=2, keepdim=True)
    var = zg.var(dim=2, unbiased=False, keepdim=True)
    y = (zg - mean) / torch.sqrt(var + EPS) * bcn.weight.view(1, -1, 1) + bcn.bias.view(1, -1, 1)
    return y.reshape(x.shape), mean_est, var_est


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
@pytest.mark.parametrize("dims", [1, 2])
def test_bcn_training_matches_the_two_steps(x, groups, dims):
    data = x if dims == 2 else x[:, :, 0, 0].contiguous()
    g = torch.randn(data.shape, generator=torch.Generator().manual_seed(2), dtype=data.dtype)
    ref, bcn = _bcn(groups=groups, dims=dims), _bcn(groups=groups, dims=dims)  # identical layers

    inp = data.clone().requires_grad_()
    expected, new_mean, new_var = _bcn_reference(inp, ref, ref.bn.running_mean, ref.bn.running_var, training=True)
    (expected * g).sum().backward()
    got_inp = data.clone().requires_grad_()
    got = bcn(got_inp)
    (got * g).sum().backward()

    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(bcn.bn.running_mean, new_mean)
    torch.testing.assert_close(bcn.bn.running_var, new_var)
    # gradients treat the estimates as constants
    torch.testing.assert_close(got_inp.grad, inp.grad)
    for (name, p), q in zip(bcn.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_bcn_eval_uses_the_estimates_without_updating_them(x):
    bcn = _bcn().eval()
    mean_est, var_est = bcn.bn.running_mean.clone(), bcn.bn.running_var.clone()
    expected, _, _ = _bcn_reference(x, bcn, mean_est, var_est, training=False)
    torch.testing.assert_close(bcn(x), expected)
    torch.testing.assert_close((bcn.bn.running_mean, bcn.bn.running_var), (mean_est, var_est))


@pytest.mark.parametrize("groups", [1, 4])
def test_bcn_with_estimates_at_the_batch_statistics_is_batchnorm_then_groupnorm(x, groups):
    bcn = _bcn(groups=groups)
    batch_mean, batch_var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    with torch.no_grad():
        bcn.bn.running_mean.copy_(batch_mean)
        bcn.bn.running_var.copy_(batch_var)
    bn = nn.BatchNorm2d(8, eps=EPS).double().train()
    gn = nn.GroupNorm(groups, 8, eps=EPS).double()
    with torch.no_grad():
        bn.weight.copy_(bcn.bn.weight)
        bn.bias.copy_(bcn.bn.bias)
        gn.weight.copy_(bcn.weight.repeat_interleave(8 // groups))  # per-group affine, spread over its channels
        gn.bias.copy_(bcn.bias.repeat_interleave(8 // groups))
    torch.testing.assert_close(bcn(x), gn(bn(x)))
    # the batch statistics are a fixed point of the estimate update
    torch.testing.assert_close(bcn.bn.running_mean, batch_mean)
    torch.testing.assert_close(bcn.bn.running_var, batch_var)


def test_bcn_estimate_moves_with_spread_about_the_old_mean():
    est = EstimatedBatchNorm(2, momentum=0.5, affine=False).double()
    v = torch.tensor([[1.0, 10.0], [3.0, 14.0]], dtype=torch.float64)  # means 2, 12; variances 1, 4
    est(v)
    torch.testing.assert_close(est.running_mean, torch.tensor([1.0, 6.0], dtype=torch.float64))
    # spread about the old mean 0: σ² + μ² = 5, 148
    torch.testing.assert_close(est.running_var, torch.tensor([3.0, 74.5], dtype=torch.float64))


def test_bcn_groups_follow_the_group_options():
    assert NormFactory.of("bcn", norm_groups=2)(8).groups == 2
    assert NormFactory.of("bcn", norm_group_size=2)(8).groups == 4
    shapes = {name: tuple(p.shape) for name, p in NormFactory.of("bcn", norm_groups=2)(8).named_parameters()}
    assert shapes == {"bn.weight": (8,), "bn.bias": (8,), "weight": (2,), "bias": (2,)}  # per channel, per group
    with pytest.raises(ConfigError, match=r"norm_groups=3 .* 8 channels"):
        NormFactory.of("bcn", norm_groups=3)(8)


@pytest.mark.parametrize("name", VARIANTS)
def test_no_affine_output_is_the_plain_normalization(x, name):
    plain = NormFactory.of(name, norm_groups=4, norm_affine=False)(8).double()
    full = NormFactory.of(name, norm_groups=4)(8).double()
    torch.testing.assert_close(plain(x), full(x))  # γ = 1, β = 0 at construction
    torch.testing.assert_close(dict(plain.named_buffers()), dict(full.named_buffers()))
