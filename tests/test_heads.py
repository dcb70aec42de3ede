"""Classifier heads (bench/zoo/archs/heads.py): global average pooling (the default),
bilinear pooling (Lin et al. 2015, arXiv:1504.07889) and the factorized bilinear layer with
DropFactor (Li et al. 2017, arXiv:1611.05709).

References re-implemented here from the authors' code:

- bilinear: cvl-umass/bilinear-cnn ``BCNN.py``, ``TensorProduct.forward`` (the pooled outer
  products, ``bmm(x1, x2ᵀ) / (h1 * w1)``) and ``BCNNModule.forward`` (``sqrt(relu(z) + 1e-5) -
  sqrt(relu(-z) + 1e-5)``, ``F.normalize``, the linear layer); also the paper's equations as
  an explicit einsum in float64;
- factorized: the forward pass of the authors' MXNet kernel (lyttonhao/mxnet
  ``src/operator/fm_convolution3-inl.h``, ``FMConvolution3Op::Forward``: ``mask_w = mask1 *
  wmat[j]``, ``temp1 = mask_w · x``, ``temp = mask_wᵀ · temp1``, ``col = sum_rows(temp * x)``,
  ``temp3 = sum_rows(mask_w * mask_w) · x²``, ``out = col − temp3 + bias``), added to a 1×1
  linear convolution and average-pooled as in lyttonhao/Factorized-Bilinear-Network
  ``cifar/symbol_resnet-small-fmconv.py``; and the layer's definition with explicit matrices.
  DropFactor follows the paper's Figure 1 (paths kept with probability q = 1 − rate in
  training, unscaled; every path at evaluation, scaled by q). At evaluation this equals the
  authors' kernel at test time (its mask √q on the factors scales the quadratic term by q);
  in training the kernel also multiplies kept paths by 1/q, which the paper does not.

The defaults are pinned against numbers computed with the architectures before the head
option existed (commit a1d38a3): parameter count, state-dict layout and outputs.
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.spec import TrialConfig, trial_from_assignments
from bench.zoo.archs import ARCHS
from bench.zoo.archs.heads import BilinearPooling, FactorizedBilinear, head_layers
from bench.zoo.convs import ConvFactory
from bench.zoo.norms import NormFactory
from bench.zoo.optimizers.agc import classifier

# (arch, input channels, image size, norm) → parameters, sha256 of "name:shape;..." of the
# state dict, logits of the first of two images (model seeded 0, input seeded 1), their sum.
GOLDEN = {
    "cnn": ((1, 28, "bn"), 16794, "bab60d48673e7e93",
            [-0.012343, -0.081025, 0.00784, 0.044368, -0.118377, -0.082257, 0.110791, 0.182578, 0.143599, 0.106183],
            0.605107),
    "resnet": ((3, 32, "bn"), 78042, "86883510a649fe63",
               [-0.049322, 0.065237, -0.029903, -0.053826, -0.108118, -0.031949, -0.097286, -0.030313, -0.018225,
                0.074952], -0.538053),
    "vgg": ((3, 32, "bn"), 579098, "f8c98f0c84120d7c",
            [-0.051827, -0.017755, -0.072471, -0.031977, 0.021785, 0.018376, 0.000259, 0.035176, 0.063817, -0.017323],
            -0.083813),
}
DEFAULT_IDS = {"cnn": "44136fa355b3678a", "resnet": "09ea9710b1571ecb", "vgg": "b3590eae4e10b3e8"}


def build(arch: str, channels: int = 3, size: int = 32, norm: str = "bn", **options) -> nn.Module:
    return ARCHS.get(arch)(in_channels=channels, num_classes=10, image_size=size, norm=NormFactory(norm), **options)


# -- defaults -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(GOLDEN))
def test_the_default_head_builds_the_architectures_as_before(arch):
    (channels, size, norm), params, layout, first, total = GOLDEN[arch]
    models = []
    for options in ({}, {"head": "gap", "head_rank": 7, "head_drop_factor": 0.1}):  # rank and rate unused by gap
        torch.manual_seed(0)
        models.append(build(arch, channels, size, norm, **options).eval())
    torch.manual_seed(1)
    x = torch.randn(2, channels, size, size)
    for model in models:
        state = model.state_dict()
        assert sum(p.numel() for p in model.parameters()) == params
        assert hashlib.sha256(";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items()).encode()).hexdigest()[:16] == layout
        with torch.no_grad():
            y = model(x)
        torch.testing.assert_close(y[0], torch.tensor(first), rtol=0, atol=1e-5)
        assert abs(y.sum().item() - total) < 1e-5
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))


@pytest.mark.parametrize("arch", list(DEFAULT_IDS))
def test_the_default_head_keeps_every_trial_id(arch):
    assert TrialConfig(arch=arch).trial_id == DEFAULT_IDS[arch]
    assert TrialConfig(arch=arch, head="gap").trial_id == DEFAULT_IDS[arch]
    # rank and rate are read only with head=factorized: not in the id otherwise
    gap = TrialConfig(arch=arch, head="gap", head_rank=7, head_drop_factor=0.1)
    assert gap.trial_id == DEFAULT_IDS[arch]
    ids = {TrialConfig(arch=arch, **o).trial_id for o in (
        {"head": "bilinear"}, {"head": "factorized"}, {"head": "factorized", "head_rank": 7},
        {"head": "factorized", "head_drop_factor": 0.1})}
    assert len(ids) == 4 and DEFAULT_IDS[arch] not in ids


# -- bilinear pooling ---------------------------------------------------------------------


def authors_bcnn(x: torch.Tensor, fc: nn.Module) -> torch.Tensor:
    """cvl-umass/bilinear-cnn BCNN.py: TensorProduct.forward (x1 = x2 = x), then BCNNModule.forward."""
    bs, c1, h1, w1 = x.size()
    x1 = x.view(bs, c1, h1 * w1)
    x2 = x.view(bs, c1, h1 * w1)
    y = torch.bmm(x1, torch.transpose(x2, 1, 2)) / (h1 * w1)
    z = y.view(bs, c1 * c1)
    z = torch.sqrt(F.relu(z) + 1e-5) - torch.sqrt(F.relu(-z) + 1e-5)
    z = torch.nn.functional.normalize(z)
    return fc(z)


def test_bilinear_head_matches_the_authors_bcnn():
    torch.manual_seed(0)
    head = nn.Sequential(*head_layers(6, 5, ConvFactory(), head="bilinear"))
    x = torch.relu(torch.randn(4, 6, 3, 5))
    torch.testing.assert_close(head(x), authors_bcnn(x, head[1]))
    assert isinstance(head[0], BilinearPooling) and head[1].in_features == 36


def test_bilinear_pooling_follows_the_equations():
    """B = (1/L) Σ_l x_l x_lᵀ, z = sign(B)·√|B| (with the authors' ε = 1e-5), z / ‖z‖₂."""
    x = torch.randn(3, 4, 2, 3, dtype=torch.float64)
    b = np.einsum("nci,ndi->ncd", x.flatten(2).numpy(), x.flatten(2).numpy()) / 6
    b = b.reshape(3, 16)
    z = np.sqrt(np.maximum(b, 0) + 1e-5) - np.sqrt(np.maximum(-b, 0) + 1e-5)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    out = BilinearPooling()(x).numpy()
    np.testing.assert_allclose(out, z, rtol=1e-12, atol=1e-14)
    # away from 0 the ε changes the signed square root by less than √ε
    exact = np.sign(b) * np.sqrt(np.abs(b))
    eps_form = np.sqrt(np.maximum(b, 0) + 1e-5) - np.sqrt(np.maximum(-b, 0) + 1e-5)
    assert np.max(np.abs(exact - eps_form)) <= np.sqrt(1e-5)


def test_bilinear_pooling_has_finite_gradients_where_products_are_zero():
    x = torch.relu(torch.randn(2, 4, 3, 3))
    x[:, 1] = 0  # a dead channel: a whole row and column of B are exactly 0
    x.requires_grad_(True)
    BilinearPooling()(x).sum().backward()
    assert torch.isfinite(x.grad).all()


# -- factorized bilinear ------------------------------------------------------------------


def fb_definition(x, weight, bias, factors, d) -> np.ndarray:
    """y_o = b_o + w_oᵀ x̄ + (1/L) Σ_l x_lᵀ A_o x_l, A_o = F_oᵀ diag(d) F_o without its diagonal."""
    n, c = x.shape[:2]
    xl = x.reshape(n, c, -1)
    out = bias[None, :] + xl.mean(axis=2) @ weight.T
    for o in range(factors.shape[0]):
        a = factors[o].T @ np.diag(d) @ factors[o]
        np.fill_diagonal(a, 0.0)
        out[:, o] += np.einsum("ncl,cd,ndl->nl", xl, a, xl).mean(axis=1)
    return out


def authors_fb_cifar_head(x, weight, bias, factors, mask) -> np.ndarray:
    """The authors' FMConvolution3 forward (1×1 kernel, one group, its bias 0) with their drop
    mask ``mask`` (one value per factor), plus the 1×1 linear conv, then the global average
    pool, as in cifar/symbol_resnet-small-fmconv.py."""
    n, c, h, w = x.shape
    num_filter, _, _ = factors.shape
    cols = x.reshape(n, c, h * w)  # unpack_patch2col with a 1×1 kernel
    mask1 = np.broadcast_to(mask[:, None], factors.shape[1:])
    fm = np.empty((n, num_filter, h * w))
    for j in range(num_filter):
        mask_w = mask1 * factors[j]
        for i in range(n):
            tmpc = cols[i]
            temp1 = mask_w @ tmpc
            temp = mask_w.T @ temp1
            col = (temp * tmpc).sum(axis=0)
            col1 = (mask_w * mask_w).sum(axis=0)
            temp3 = col1 @ (tmpc * tmpc)
            fm[i, j] = col - temp3
    conv = np.einsum("oc,ncl->nol", weight, cols) + bias[None, :, None]
    return (fm + conv).mean(axis=2)


def fb_head(channels=5, classes=3, rank=4, rate=0.5, seed=0) -> FactorizedBilinear:
    torch.manual_seed(seed)
    head = FactorizedBilinear(channels, classes, rank, rate, ConvFactory()).double()
    with torch.no_grad():
        head.linear.bias.normal_()
    return head


def numpy_of(head: FactorizedBilinear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (head.linear.weight.detach().numpy(), head.linear.bias.detach().numpy(), head.factors.detach().numpy())


def test_factorized_head_follows_its_definition_and_the_authors_kernel_at_evaluation():
    head = fb_head().eval()
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        out = head(x).numpy()
    weight, bias, factors = numpy_of(head)
    q = 0.5
    np.testing.assert_allclose(out, fb_definition(x.numpy(), weight, bias, factors, np.full(4, q)), rtol=1e-10, atol=1e-12)
    # the authors' test-time mask is √q on every factor
    np.testing.assert_allclose(out, authors_fb_cifar_head(x.numpy(), weight, bias, factors, np.full(4, np.sqrt(q))),
                               rtol=1e-10, atol=1e-12)


def test_without_dropfactor_training_and_evaluation_agree_with_the_full_layer():
    head = fb_head(rate=0.0)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    weight, bias, factors = numpy_of(head)
    expected = fb_definition(x.numpy(), weight, bias, factors, np.ones(4))
    with torch.no_grad():
        np.testing.assert_allclose(head.train()(x).numpy(), expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(head.eval()(x).numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(expected, authors_fb_cifar_head(x.numpy(), weight, bias, factors, np.ones(4)),
                               rtol=1e-10, atol=1e-12)


def test_dropfactor_drops_whole_factors_only_in_training():
    """Each training pass keeps a subset of the k = 3 factors, the same for every image and
    class; kept paths are not rescaled; evaluation is deterministic, every path × q."""
    rank, q = 3, 0.7
    head = fb_head(rank=rank, rate=1 - q)
    x = torch.randn(4, 5, 2, 3, dtype=torch.float64)
    weight, bias, factors = numpy_of(head)
    candidates = {m: fb_definition(x.numpy(), weight, bias, factors, np.array(m, dtype=float))
                  for m in itertools.product((0.0, 1.0), repeat=rank)}
    kept = np.zeros(rank)
    draws = 300
    torch.manual_seed(3)
    for _ in range(draws):
        with torch.no_grad():
            out = head.train()(x).numpy()
        matches = [m for m, ref in candidates.items() if np.allclose(out, ref, rtol=1e-10, atol=1e-12)]
        assert len(matches) == 1, "one {0, 1} mask over the factors explains the whole batch"
        kept += matches[0]
    bound = 4 * np.sqrt(q * (1 - q) / draws)
    assert np.all(np.abs(kept / draws - q) < bound), kept / draws
    with torch.no_grad():
        evaluated = head.eval()(x).numpy()
        np.testing.assert_array_equal(evaluated, head(x).numpy())
    np.testing.assert_allclose(evaluated, fb_definition(x.numpy(), weight, bias, factors, np.full(rank, q)), rtol=1e-10)
    # "the output is multiplied by p": the evaluation quadratic term is q times the full one
    full = candidates[(1.0,) * rank] - candidates[(0.0,) * rank]
    np.testing.assert_allclose(evaluated - candidates[(0.0,) * rank], q * full, rtol=1e-10, atol=1e-12)


def test_a_dropped_factor_gets_no_gradient():
    head = fb_head(rank=6, rate=0.5).train()
    x = torch.randn(4, 5, 2, 3, dtype=torch.float64)
    torch.manual_seed(5)
    weights = head.path_weights()
    torch.manual_seed(5)
    head(x).square().sum().backward()
    grad = head.factors.grad.abs().sum(dim=(0, 2))
    assert 0 < weights.sum() < 6, weights  # seed 5 keeps some factors and drops others
    assert torch.all((grad == 0) == (weights == 0))


def test_the_quadratic_term_stays_in_single_precision_under_autocast():
    head = FactorizedBilinear(16, 3, 4, 0.5, ConvFactory()).eval()
    x = torch.randn(2, 16, 3, 3) * 4
    with torch.no_grad():
        quadratic = head.quadratic(x, head.path_weights())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = head(x)
            linear = head.linear(x.mean(dim=(2, 3)))
            half_quadratic = head.quadratic(x, head.path_weights())  # called directly: bf16 einsums
    assert half.dtype == torch.float32 and linear.dtype == torch.bfloat16 and half_quadratic.dtype == torch.bfloat16
    torch.testing.assert_close(half, linear.float() + quadratic)  # only the linear part ran in bf16


def test_factors_start_at_the_authors_initialization():
    torch.manual_seed(0)
    head = FactorizedBilinear(64, 10, 20, 0.5, ConvFactory())
    assert head.factors.shape == (10, 20, 64)
    std = head.factors.std().item()
    assert abs(std - np.sqrt(2 / (20 * 64))) < 0.05 * np.sqrt(2 / (20 * 64))
    assert abs(head.factors.mean().item()) < 0.003


# -- in the architectures -----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["cnn", "resnet", "vgg"])
@pytest.mark.parametrize("head", ["bilinear", "factorized"])
@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (8, 1)])
def test_every_head_on_every_architecture_at_28_32_and_8_pixels(arch, head, size, channels):
    model = build(arch, channels, size, width=4, head=head, head_rank=3)
    x = torch.randn(4, channels, size, size)
    out = model(x)
    assert out.shape == (4, 10)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_classifier_is_the_whole_head():
    """Adaptive gradient clipping leaves the classifier out: the factorized head's factors
    with its linear part; the bilinear head's linear layer."""
    fb = build("resnet", width=4, head="factorized")
    assert classifier(fb) is fb.head[0] and isinstance(fb.head[0], FactorizedBilinear)
    bl = build("cnn", width=4, head="bilinear")
    assert classifier(bl) is bl[-1] and bl[-1].in_features == 8 * 8


def test_vgg_starts_the_linear_part_of_every_head_at_its_classifier_init():
    torch.manual_seed(0)
    model = build("vgg", width=16, head="factorized")
    assert model.classifier.is_classifier and len(model.pool) == 0
    linear = model.classifier.linear
    assert abs(linear.weight.std().item() - 0.01) < 0.002 and torch.equal(linear.bias, torch.zeros(10))
    bl = build("vgg", width=16, head="bilinear")
    assert bl.classifier.in_features == 128 * 128 and abs(bl.classifier.weight.std().item() - 0.01) < 0.001


def test_mistakes_are_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="head must be one of gap, bilinear, factorized"):
        TrialConfig(arch="resnet", head="compact")
    with pytest.raises(ConfigError, match="head_drop_factor must be a number ≥ 0 and < 1"):
        TrialConfig(arch="resnet", head="factorized", head_drop_factor=1.0)
    with pytest.raises(ConfigError, match="head_rank must be an integer ≥ 1"):
        TrialConfig(arch="cnn", head="factorized", head_rank=0)
    with pytest.raises(ConfigError, match=r"`head_rank` does nothing for arch=resnet, head=gap: it is read only with "
                                          r"arch=cnn, .*arch=resnet, .*and then only with head=factorized"):
        trial_from_assignments({"arch": "resnet", "head_rank": 8})
    with pytest.raises(ConfigError, match="`head` does nothing for arch=mlp"):
        trial_from_assignments({"arch": "mlp", "head": "bilinear"})
    with pytest.raises(ConfigError, match="head must be one of"):
        build("cnn", head="compact")
