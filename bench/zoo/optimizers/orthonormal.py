"""The orthonormal regularizer and initialization (Xie, Xiong & Pu 2017, "All You Need is
Beyond a Good Init: Exploring Better Solution for Training Extremely Deep Convolutional
Neural Networks with Orthonormality and Modulation", CVPR, arXiv:1703.01827, §3.2 and §4):
``weight_decay_mode: orthonormal``, weight decay's pull toward 0 replaced by a pull toward
orthonormal filters.

Definition (Eq. 3). With W_l ∈ ℝ^{f_in × f_out} the filters of the l-th conv or fully
connected layer as columns (f_in = k_h·k_w·C_in, f_out the output channels), "we replace
original weight decay regularizer with the orthonormal regularizer"

    (λ/2) Σ_l ‖W_lᵀ W_l − I‖²_F,

λ "the regularization coefficient as weight decay" (``weight_decay``), the sum over every
conv and fully connected layer. In torch's layout V = Wᵀ (one filter per row) its gradient
is 2λ (V Vᵀ − I) V, added to the gradient before the optimizer step, as the ``l2`` form
adds λw; the other parameters (biases, norm γ and β) keep that L2 form (none with
``wd_exclude_1d``). A layer whose filters are orthonormal gets no decay at all.

Group-wise (§4): f_out > f_in filters of dimension f_in cannot all be orthonormal, so "we
divide the vectors into f_out/f_in + f_out mod f_in groups, orthogonalization is
implemented within each group independently". Here the groups are consecutive filters, at
most f_in to a group (⌊f_out/f_in⌋ full groups and one of the f_out mod f_in left), and
the penalty is the sum over the groups; the paper discourages L2 for such layers and
orthonormality for the others, which this avoids.

Initialization (§4): "we implement this constraint both at initialization and in
regularization": each group's filters are drawn orthonormal (``ortho_init``, on by
default; the paper runs Gram-Schmidt over Gaussian vectors, here
``torch.nn.init.orthogonal_``, QR of a Gaussian matrix: the same orthonormalization).

The authors published no code; the tests pin the gradient to autograd of Eq. 3 and the
groups to §4. The regularizer acts on stored weights, so reparametrized layers are refused
(:mod:`.matrices`). The backward error modulation of §3.3 is :mod:`.modulation`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.zoo.optimizers.matrices import as_matrix, plain_layers

TECHNIQUE = "The orthonormal regularizer (weight_decay_mode=orthonormal)"


def groups(matrix: Tensor) -> tuple[Tensor, ...]:
    """The rows (filters) of ``matrix`` in the groups held orthonormal: all of them when
    there are no more filters than their dimension, else consecutive groups of at most
    that many. Views of ``matrix``."""
    return matrix.split(matrix.shape[1]) if matrix.shape[0] > matrix.shape[1] else (matrix,)


def penalty(weight: Tensor) -> Tensor:
    """½ Σ_groups ‖V Vᵀ − I‖²_F of ``weight`` (Eq. 3 with λ = 1, group-wise)."""
    total = weight.new_zeros(())
    for v in groups(as_matrix(weight)):
        total = total + (v @ v.T - torch.eye(len(v), dtype=v.dtype, device=v.device)).square().sum()
    return total / 2


def gradient(weight: Tensor) -> Tensor:
    """∂ penalty / ∂ weight = 2 (V Vᵀ − I) V for each group of filters V."""
    parts = [2 * ((v @ v.T) @ v - v) for v in groups(as_matrix(weight))]
    return torch.cat(parts).reshape(weight.shape)


def layer_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights the regularizer acts on: every conv and linear layer's."""
    return [layer.weight for layer in plain_layers(model, TECHNIQUE)]


@torch.no_grad()
def orthonormal_init(model: nn.Module) -> None:
    """Every conv and linear weight's filters orthonormal, group by group (§4)."""
    for weight in layer_weights(model):
        matrix = torch.empty_like(as_matrix(weight))
        for v in groups(matrix):
            nn.init.orthogonal_(v)
        weight.copy_(matrix.reshape(weight.shape))
