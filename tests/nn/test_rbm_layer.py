"""The RBM layer against enumeration and autograd: free energies, conditionals, the closed-form CD and
sparsity gradients, Cho et al.'s variance gradient, and exact log Z's refusal of large layers."""

from __future__ import annotations

import pytest
import torch
from helpers.boltzmann import all_states

from lightning_ebm.nn import RBMLayer


def random_rbm(n_visible: int, n_hidden: int, scale: float = 1.0, **kwargs) -> RBMLayer:
    rbm = RBMLayer(n_visible, n_hidden, init_std=scale, **kwargs)
    with torch.no_grad():
        rbm.visible_bias.normal_(0, scale)
        rbm.hidden_bias.normal_(0, scale)
    return rbm.double()


def test_free_energy_sums_out_the_hidden_units() -> None:
    rbm = random_rbm(5, 4)
    v, h = all_states(5), all_states(4)
    joint = torch.stack([rbm.joint_energy(v, hh.expand(v.shape[0], -1)) for hh in h], 1)
    torch.testing.assert_close(rbm.free_energy(v), -torch.logsumexp(-joint, 1))


def test_gaussian_free_energy_sums_out_the_hidden_units() -> None:
    rbm = random_rbm(3, 4, visible="gaussian", sigma=0.8, learn_sigma=True)
    with torch.no_grad():
        rbm.log_variance.copy_(torch.log(torch.tensor([0.3, 0.7, 1.1]) ** 2))
    v = torch.randn(6, 3, dtype=torch.float64)
    h = all_states(4)
    joint = torch.stack([rbm.joint_energy(v, hh.expand(6, -1)) for hh in h], 1)
    torch.testing.assert_close(rbm.free_energy(v), -torch.logsumexp(-joint, 1))


def test_conditionals_match_the_joint_distribution() -> None:
    rbm = random_rbm(4, 3)
    v, h = all_states(4), all_states(3)
    joint = torch.stack([-rbm.joint_energy(v, hh.expand(16, -1)) for hh in h], 1)  # log p~(v, h)
    p_h_given_v = torch.softmax(joint, 1)  # (16 v, 8 h)
    torch.testing.assert_close(rbm.hidden_probs(v), p_h_given_v @ h)
    p_v_given_h = torch.softmax(joint, 0)
    torch.testing.assert_close(rbm.visible_mean(h), p_v_given_h.t() @ v)


def test_cd_gradient_is_the_closed_form_update() -> None:
    rbm = random_rbm(6, 5, scale=0.5)
    v_data = torch.bernoulli(torch.full((7, 6), 0.4, dtype=torch.float64))
    v_model = torch.bernoulli(torch.full((7, 6), 0.6, dtype=torch.float64))
    rbm.cd_loss(v_data, v_model).backward()
    ph_data, ph_model = rbm.hidden_probs(v_data).detach(), rbm.hidden_probs(v_model).detach()
    # Hinton (2010), Eq. 9-10 with probabilities for the hidden states: descent direction = -gradient.
    dW = v_data.t() @ ph_data / 7 - v_model.t() @ ph_model / 7
    torch.testing.assert_close(-rbm.W.grad, dW)
    torch.testing.assert_close(-rbm.visible_bias.grad, v_data.mean(0) - v_model.mean(0))
    torch.testing.assert_close(-rbm.hidden_bias.grad, ph_data.mean(0) - ph_model.mean(0))


def test_gaussian_variance_gradient_is_cho_et_al() -> None:
    """d F / d z_i with z_i = log sigma_i^2 (Cho et al. 2011):
    -(v_i - b_i)^2 / (2 sigma_i^2) + v_i / sigma_i^2 * sum_j W_ij p(h_j | v)."""
    rbm = random_rbm(4, 3, scale=0.5, visible="gaussian", sigma=0.8, learn_sigma=True)
    v = torch.randn(5, 4, dtype=torch.float64)
    rbm.free_energy(v).sum().backward()
    var = rbm.variance.detach()
    ph = rbm.hidden_probs(v).detach()
    b, W = rbm.visible_bias.detach(), rbm.W.detach()
    expected = (-((v - b) ** 2) / (2 * var) + v / var * (ph @ W.t())).sum(0)
    torch.testing.assert_close(rbm.log_variance.grad, expected)


def test_sparsity_term_gradient_is_hintons_rule() -> None:
    rbm = random_rbm(5, 3, sparsity_target=0.1, sparsity_cost=0.5, sparsity_decay=0.0)
    v = torch.bernoulli(torch.full((8, 5), 0.5, dtype=torch.float64))
    rbm.sparsity_loss(v).backward()
    excess = rbm.hidden_probs(v).detach().mean(0) - 0.1  # q with decay 0 is this batch's mean
    torch.testing.assert_close(rbm.hidden_bias.grad, 0.5 * excess)
    torch.testing.assert_close(rbm.W.grad, 0.5 * v.mean(0)[:, None] * excess[None, :])


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_closed_form_gradients_are_the_gradient_of_the_free_energy_difference(visible: str) -> None:
    rbm = random_rbm(6, 5, scale=0.5, visible=visible, sigma=0.7)
    v_data = torch.bernoulli(torch.full((7, 6), 0.4, dtype=torch.float64))
    v_model = torch.rand(5, 6, dtype=torch.float64)  # as many persistent chains as the user chose
    params = [rbm.W, rbm.visible_bias, rbm.hidden_bias]
    expected = torch.autograd.grad(rbm.cd_loss(v_data, v_model), params)
    with torch.no_grad():
        rbm.cd_gradients(v_data, rbm.hidden_probs(v_data), v_model, rbm.hidden_probs(v_model))
    for param, want in zip(params, expected):
        torch.testing.assert_close(param.grad, want)


def test_closed_form_sparsity_gradients_are_those_of_the_sparsity_term() -> None:
    """The closed-form sparsity term (added to the CD gradient) equals autograd of ``sparsity_loss``
    (whose gradient ``test_sparsity_term_gradient_is_hintons_rule`` checks by hand), with the DBM's
    doubled bottom-up input too, and updates the running activity the same way."""
    for scale in (1.0, 2.0):
        rbm = random_rbm(5, 3, sparsity_target=0.1, sparsity_cost=0.5, sparsity_decay=0.6, bottom_up_scale=scale)
        twin = random_rbm(5, 3, sparsity_target=0.1, sparsity_cost=0.5, sparsity_decay=0.6, bottom_up_scale=scale)
        twin.load_state_dict(rbm.state_dict())
        v = torch.bernoulli(torch.full((8, 5), 0.5, dtype=torch.float64))
        twin.sparsity_loss(v).backward()
        with torch.no_grad():
            for p in (rbm.W, rbm.hidden_bias):
                p.grad = torch.zeros_like(p)
            rbm.sparsity_gradients(v, rbm.hidden_probs(v))
        torch.testing.assert_close(rbm.W.grad, twin.W.grad)
        torch.testing.assert_close(rbm.hidden_bias.grad, twin.hidden_bias.grad)
        torch.testing.assert_close(rbm.hidden_activity, twin.hidden_activity)
