"""Flow-matching math and the Euler sampler, against values computed by hand and diffusers' scheduler."""

from __future__ import annotations

import math

import pytest
import torch

from layercomposer.flow import (
    FlowSchedule,
    add_noise,
    euler_step,
    predict_x0,
    sample_logit_normal,
    time_shift,
    velocity_target,
)
from layercomposer.sampler import sample_euler


def test_shift_mu_is_linear_in_noisy_tokens():
    s = FlowSchedule()
    assert s.mu(256) == pytest.approx(0.5)
    assert s.mu(4096) == pytest.approx(1.15)
    assert s.mu(1024) == pytest.approx(0.5 + 0.65 * 768 / 3840)


def test_sigmas_by_hand_for_four_steps_at_256_tokens():
    # mu = 0.5; t = 1, .75, .5, .25 -> e^.5 / (e^.5 + 1/t - 1), then a final 0.
    e = math.exp(0.5)
    expected = [1.0, e / (e + 1 / 3), e / (e + 1), e / (e + 3), 0.0]
    assert FlowSchedule().sigmas(4, 256).tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seq_len", [64, 256, 1024, 4096])
def test_sigmas_match_diffusers_flux_scheduler(seq_len):
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    steps = 28
    sched = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    ours = FlowSchedule().sigmas(steps, seq_len)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=FlowSchedule().mu(seq_len))
    assert ours.tolist() == pytest.approx(sched.sigmas.tolist(), abs=1e-6)


def test_static_shift():
    s = FlowSchedule(use_dynamic_shifting=False, shift=3.0)
    # t = 0.5 -> 3 * .5 / (1 + 2 * .5) = 0.75
    assert s.sigmas(2, 999).tolist() == pytest.approx([1.0, 0.75, 0.0])
    assert time_shift(0.0, torch.tensor([0.5])).item() == pytest.approx(0.5)


def test_noising_target_and_x0_are_consistent():
    x0, e = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 4.0]])
    t = torch.tensor([0.25])
    xt = add_noise(x0, e, t)
    assert xt.tolist() == [[0.875, -0.5]]  # 0.75 x0 + 0.25 e
    v = velocity_target(x0, e)
    assert v.tolist() == [[-0.5, 6.0]]
    assert predict_x0(xt, v, 0.25).tolist() == [[1.0, -2.0]]


def test_one_euler_step_against_a_known_velocity():
    x = torch.tensor([1.0, 2.0])
    v = torch.tensor([3.0, -1.0])
    assert euler_step(x, v, 0.8, 0.5).tolist() == pytest.approx([0.1, 2.3])


def test_euler_integrates_constant_and_linear_fields():
    noise = torch.tensor([[[2.0, -1.0]]])
    sigmas = FlowSchedule().sigmas(5, 256)
    c = torch.tensor([0.5, 3.0])
    # dx/dt = c: Euler is exact, x(0) = noise - c.
    out = sample_euler(lambda x, s: c.expand_as(x), noise, sigmas)
    assert out.flatten().tolist() == pytest.approx([1.5, -4.0])
    # dx/dt = x: each step multiplies by (1 + sigma_next - sigma).
    factor = math.prod(1 + sigmas[i + 1].item() - sigmas[i].item() for i in range(5))
    out = sample_euler(lambda x, s: x, noise, sigmas)
    assert out.flatten().tolist() == pytest.approx([2.0 * factor, -1.0 * factor])


def test_sampler_reports_every_step_and_the_true_path_is_recovered():
    # The exact velocity of a straight path from noise e to x0 is e - x0: Euler lands on x0 exactly.
    x0, e = torch.tensor([[[0.3, -0.7]]]), torch.tensor([[[1.0, 2.0]]])
    events = []
    out = sample_euler(lambda x, s: e - x0, e, FlowSchedule().sigmas(4, 256), events.append)
    assert out.flatten().tolist() == pytest.approx(x0.flatten().tolist())
    assert [ev.step for ev in events] == [1, 2, 3, 4] and events[-1].sigma == 0.0
    assert events[0].denoised.flatten().tolist() == pytest.approx(x0.flatten().tolist())


def test_logit_normal_times_are_seeded_and_in_range():
    a = sample_logit_normal(1000, torch.Generator().manual_seed(0))
    b = sample_logit_normal(1000, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.min() > 0 and a.max() < 1
    assert abs(a.median().item() - 0.5) < 0.05


def test_known_region_follows_the_noised_path_and_ends_exact():
    """Known tokens sit on (1 - s) x0 + s e after every step; the others follow the velocity field."""
    from layercomposer.sampler import KnownRegion, sample_euler

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 6, 4, generator=g)
    x0 = torch.randn(1, 6, 4, generator=g)
    mask = torch.tensor([1.0, 0, 1, 0, 0, 1]).reshape(1, 6, 1)
    sigmas = torch.tensor([1.0, 0.75, 0.4, 0.0])
    seen = []
    out = sample_euler(lambda x, s: torch.ones_like(x), noise, sigmas,
                       callback=lambda e: seen.append((e.sigma, e.latents.clone())), known=KnownRegion(x0, mask))
    keep = mask.bool().expand_as(x0)
    for s, lat in seen:
        assert torch.allclose(lat[keep], ((1 - s) * x0 + s * noise)[keep])
    assert torch.equal(out[keep], x0[keep])
    # Free tokens: x = e + (0 - 1) * 1 under the constant velocity 1.
    assert torch.allclose(out[~keep], (noise - 1.0)[~keep])
