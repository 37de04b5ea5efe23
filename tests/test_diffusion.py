"""Diffusion math against closed forms, and every sampler against an exact denoiser."""

import math

import pytest
import torch

from cascade.diffusion import (
    SAMPLERS, ClassifierFreeGuidance, Denoiser, DiffusionConfig, DynamicThreshold, NoiseSchedule,
    ScheduleConfig, diffusion_loss, get_sampler, invert_ddim, network_evaluations, target, to_x0,
)


def test_cosine_schedule_matches_closed_form():
    s = NoiseSchedule(ScheduleConfig(kind="cosine"))
    T, off = 1000, 0.008
    f = lambda t: math.cos((t / T + off) / (1 + off) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert (s.betas <= 0.999 + 1e-12).all()


def test_linear_schedule_matches_closed_form():
    s = NoiseSchedule(ScheduleConfig(kind="linear"))
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-12)
    assert torch.allclose(s.betas, betas, rtol=1e-9)


def test_continuous_view_agrees_at_integers_and_inverts():
    s = NoiseSchedule()
    t = torch.arange(0, 1000, 37)
    alpha, sigma = s.alpha_sigma(t)
    assert torch.allclose(alpha**2, s.alphas_cumprod[t], rtol=1e-10)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(alpha))
    tf = torch.tensor([0.0, 3.25, 499.5, 998.9])
    assert torch.allclose(s.t_from_log_snr(s.log_snr(tf)), tf.double(), atol=1e-6)
    lam = s.log_snr(torch.linspace(0, 999, 200))
    assert (lam[1:] < lam[:-1]).all()  # strictly decreasing


def test_respacing():
    s = NoiseSchedule()
    assert torch.equal(s.timesteps(1000), torch.arange(999, -1, -1))
    assert s.timesteps(10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert s.timesteps(10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert s.timesteps(4, "linspace").tolist() == [999, 666, 333, 0]
    k = s.timesteps(12, "karras")  # real-valued t, σ/α from 80 down to the schedule's minimum
    alpha, sigma = s.alpha_sigma(k)
    assert (sigma / alpha)[0].item() == pytest.approx(80.0, rel=1e-6) and k[-1].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.all(k[1:] < k[:-1])
    # the respaced process has betas 1 − ᾱ_t/ᾱ_s between kept steps and keeps ᾱ exactly
    ts = s.timesteps(25)
    abar = s.alphas_cumprod[ts]
    assert torch.all(abar[1:] > abar[:-1])
    for bad in (0, -3, 1001, 2.5):
        with pytest.raises(ValueError, match="steps"):
            s.timesteps(bad)
    with pytest.raises(ValueError, match="spacing"):
        s.timesteps(10, "random")


@pytest.mark.parametrize("param", ["eps", "v", "x0"])
def test_parametrization_round_trip(param):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    alpha = torch.rand(8, 1, generator=g).clamp(0.05, 0.95).sqrt()
    sigma = (1 - alpha**2).sqrt()
    x_t = alpha * x0 + sigma * eps
    assert torch.allclose(to_x0(target(x0, eps, alpha, sigma, param), x_t, alpha, sigma, param), x0, atol=1e-5)


def test_v_is_alpha_eps_minus_sigma_x0():
    alpha, sigma = torch.tensor(0.6), torch.tensor(0.8)
    x0, eps = torch.tensor([1.0]), torch.tensor([2.0])
    assert target(x0, eps, alpha, sigma, "v").item() == pytest.approx(0.6 * 2 - 0.8 * 1)


class GaussianMixtureNet(torch.nn.Module):
    """The exact E[x0 | x_t] of a 1-D Gaussian mixture, returned as an eps/v/x0 prediction."""

    def __init__(self, schedule, param, means, stds, weights):
        super().__init__()
        self.schedule, self.param = schedule, param
        self.means, self.stds, self.weights = (torch.tensor(v, dtype=torch.float64) for v in (means, stds, weights))

    def forward(self, x, t):
        a, s = self.schedule.alpha_sigma(t.cpu())
        a, s = a.view(-1, 1, 1), s.view(-1, 1, 1)
        xx = x.double().unsqueeze(-1)  # (B, D, K)
        var = a**2 * self.stds**2 + s**2
        logp = torch.log(self.weights) - 0.5 * torch.log(var) - 0.5 * (xx - a * self.means) ** 2 / var
        resp = torch.softmax(logp, dim=-1)
        post = self.means + a * self.stds**2 / var * (xx - a * self.means)
        x0 = (resp * post).sum(-1)
        return target(x0, (x.double() - a[..., 0] * x0) / s[..., 0], a[..., 0], s[..., 0], self.param).float()


def _sample(name, param, means, stds, weights, steps, n=20000, **kw):
    schedule = NoiseSchedule()
    net = GaussianMixtureNet(schedule, param, means, stds, weights)
    den = Denoiser(net, schedule, DiffusionConfig(parametrization=param))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, generator=g)
    return get_sampler(name)(den, schedule, x, steps, {}, g, **kw).squeeze(1)


SAMPLER_SETTINGS = [("ddpm", 250, "trailing"), ("ddim", 100, "trailing"), ("dpmpp_2m", 25, "trailing"),
                    ("heun", 50, "karras")]


@pytest.mark.parametrize("name,steps,spacing", SAMPLER_SETTINGS)
@pytest.mark.parametrize("param", ["eps", "v", "x0"])
def test_samplers_reproduce_gaussian(name, steps, spacing, param):
    out = _sample(name, param, [0.5], [0.3], [1.0], steps, spacing=spacing)
    assert out.mean().item() == pytest.approx(0.5, abs=0.01)
    assert out.std().item() == pytest.approx(0.3, rel=0.03)


def test_heun_from_t_max_on_a_trailing_grid_stays_accurate_at_few_steps():
    # the trailing grid starts at t = T (σ/α ≈ 3e4): a Heun correction there once gave std 1.18 here
    out = _sample("heun", "v", [0.5], [0.3], [1.0], 10, spacing="trailing")
    assert out.mean().item() == pytest.approx(0.5, abs=0.02)
    assert out.std().item() == pytest.approx(0.3, rel=0.15)


@pytest.mark.parametrize("name,steps,spacing", SAMPLER_SETTINGS)
def test_samplers_reproduce_gaussian_mixture(name, steps, spacing):
    means, stds, weights = [-1.0, 1.5], [0.2, 0.3], [0.3, 0.7]
    out = _sample(name, "eps", means, stds, weights, steps, spacing=spacing)
    mean = 0.3 * -1.0 + 0.7 * 1.5
    second = 0.3 * (0.04 + 1.0) + 0.7 * (0.09 + 2.25)
    assert out.mean().item() == pytest.approx(mean, abs=0.03)
    assert out.var().item() == pytest.approx(second - mean**2, rel=0.04)
    assert ((out > 0).float().mean().item()) == pytest.approx(0.7, abs=0.02)  # mode weights kept


def test_ddim_eta1_matches_ddpm_variance_and_eta0_is_deterministic():
    a = _sample("ddim", "eps", [0.0], [1.0], [1.0], 20, n=10, eta=0.0)
    b = _sample("ddim", "eps", [0.0], [1.0], [1.0], 20, n=10, eta=0.0)
    assert torch.equal(a, b)
    # with eta = 1 the stochastic path has DDPM's noise: same generator -> same draws
    c = _sample("ddim", "eps", [0.2], [0.5], [1.0], 30, n=50, eta=1.0)
    d = _sample("ddpm", "eps", [0.2], [0.5], [1.0], 30, n=50)
    assert torch.allclose(c, d, atol=1e-4)


@pytest.mark.parametrize("param", ["eps", "v"])
def test_ddim_inversion_round_trips_and_maps_data_to_noise(param):
    """Inverting mixture samples gives x_T ~ N(0, 1) (the ODE carries the data distribution to the
    prior), and DDIM (η = 0) from x_T returns them; on a finer backward grid, more exactly."""
    schedule = NoiseSchedule()
    means, stds, weights = [-1.0, 1.5], [0.2, 0.3], [0.3, 0.7]
    den = Denoiser(GaussianMixtureNet(schedule, param, means, stds, weights), schedule, DiffusionConfig(parametrization=param))
    g = torch.Generator().manual_seed(3)
    pick = torch.rand(4000, 1, generator=g) < 0.7
    x0 = torch.where(pick, 1.5 + 0.3 * torch.randn(4000, 1, generator=g), -1.0 + 0.2 * torch.randn(4000, 1, generator=g))
    errors = {}
    for steps in (25, 200):
        x_T = invert_ddim(den, schedule, x0, steps, {})
        back = SAMPLERS["ddim"](den, schedule, x_T, steps, {}, None, eta=0.0)
        errors[steps] = (back - x0).abs().mean().item()
    assert x_T.mean().item() == pytest.approx(0.0, abs=0.08) and x_T.std().item() == pytest.approx(1.0, abs=0.05)
    assert errors[200] < 0.015 < 0.05 < errors[25]
    # fed forward on a coarser grid (what variations do: invert finely, sample with the stage's steps)
    back = SAMPLERS["ddim"](den, schedule, x_T, 50, {}, None, eta=0.0)
    assert (back - x0).abs().mean().item() < 0.03


def test_unknown_sampler_and_evaluation_counts():
    with pytest.raises(ValueError, match="unknown sampler 'euler_x'"):
        get_sampler("euler_x")
    assert network_evaluations("heun", 10) == 19 and network_evaluations("ddim", 10) == 10
    assert set(SAMPLERS) == {"ddpm", "ddim", "dpmpp_2m", "heun"}


class CondNet(torch.nn.Module):
    def forward(self, x, t, *, label, drop):
        return torch.where(drop.view(-1, 1), torch.zeros_like(x), label.view(-1, 1).expand_as(x).float())


def test_classifier_free_guidance_is_batched_and_linear():
    schedule = NoiseSchedule()
    calls = []
    net = CondNet()
    den = Denoiser(net, schedule, DiffusionConfig(parametrization="x0"))
    counting = lambda x, t, c: calls.append(x.shape[0]) or den(x, t, c)  # noqa: E731
    cond = {"label": torch.tensor([1, 2]), "drop": torch.tensor([False, False])}
    uncond = {"label": torch.tensor([1, 2]), "drop": torch.tensor([True, True])}
    x, t = torch.zeros(2, 3), torch.tensor([500.0, 500.0])
    out = ClassifierFreeGuidance(counting, uncond, 3.0)(x, t, cond)
    assert calls == [4]  # one batched call for both halves
    assert torch.allclose(out, torch.tensor([[3.0] * 3, [6.0] * 3]))
    assert torch.allclose(ClassifierFreeGuidance(den, uncond, 0.0)(x, t, cond), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="guidance"):
        ClassifierFreeGuidance(den, uncond, -1.0)


def test_dynamic_threshold():
    big = torch.linspace(-4, 4, 1000).view(1, 1000)
    small = torch.linspace(-0.5, 0.5, 1000).view(1, 1000)
    den = DynamicThreshold(lambda x, t, c: x, 0.995)
    out = den(torch.cat([big, small]), torch.zeros(2), {})
    s = torch.quantile(big.abs(), 0.995).item()
    assert out[0].abs().max().item() == pytest.approx(1.0, abs=1e-6)
    assert out[0, 500].item() == pytest.approx(big[0, 500].item() / s, abs=1e-6)
    assert torch.equal(out[1], small[0])  # s clamped to 1: untouched


def test_loss_is_zero_for_exact_prediction_and_min_snr_weights():
    schedule = NoiseSchedule()
    x0, noise = torch.randn(6, 4), torch.randn(6, 4)
    t = torch.tensor([0, 10, 100, 500, 900, 999])

    class Oracle(torch.nn.Module):
        def __init__(self, param):
            super().__init__()
            self.param = param

        def forward(self, x, tt):
            a, s = schedule.alpha_sigma(tt.cpu())
            return target(x0, noise, a.view(-1, 1).float(), s.view(-1, 1).float(), self.param)

    for param in ("eps", "v", "x0"):
        den = Denoiser(Oracle(param), schedule, DiffusionConfig(parametrization=param))
        assert diffusion_loss(den, x0, {}, t=t, noise=noise).item() < 1e-8
    # min-SNR: an x0-space error e gives loss min(SNR, γ)·|e|² whatever the parametrisation
    x0, noise, t = x0[:4], noise[:4], t[:4]  # SNR > 1e-3: an ε-space error stays representable in fp32
    a, s = schedule.alpha_sigma(t)
    snr = (a / s) ** 2
    for param in ("eps", "v", "x0"):
        class Off(torch.nn.Module):
            def forward(self, x, tt, param=param):
                aa, ss = schedule.alpha_sigma(tt.cpu())
                aa, ss = aa.view(-1, 1), ss.view(-1, 1)
                x0_wrong = x0.double() + 0.1
                eps_wrong = (x.double() - aa * x0_wrong) / ss
                return target(x0_wrong, eps_wrong, aa, ss, param).float()
        den = Denoiser(Off(), schedule, DiffusionConfig(parametrization=param))
        got = diffusion_loss(den, x0, {}, t=t, noise=noise, min_snr_gamma=5.0, reduce=False)
        expect = snr.clamp(max=5.0) * 0.01
        assert torch.allclose(got.double(), expect, rtol=2e-3)


def test_distillation_target_is_the_teachers_prediction_mixed_by_weight():
    schedule = NoiseSchedule()
    x0, noise = torch.randn(5, 4), torch.randn(5, 4)
    t = torch.tensor([0, 100, 400, 700, 999])

    class Const(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x, tt):
            return torch.full_like(x, self.value)

    v = DiffusionConfig(parametrization="v")
    student, teacher = Denoiser(Const(0.5), schedule, v), Denoiser(Const(-0.25), schedule, v)
    # the student is off the teacher by 0.75 everywhere: pure distillation sees only that
    got = diffusion_loss(student, x0, {}, t=t, noise=noise, teacher=teacher, reduce=False)
    assert torch.allclose(got, torch.full((5,), 0.75**2))
    assert diffusion_loss(teacher, x0, {}, t=t, noise=noise, teacher=teacher).item() == 0.0
    # weight 0 is the plain loss; 0.5 aims half-way between the true target and the teacher
    plain = diffusion_loss(student, x0, {}, t=t, noise=noise, reduce=False)
    assert torch.equal(diffusion_loss(student, x0, {}, t=t, noise=noise, teacher=teacher, teacher_weight=0.0,
                                      reduce=False), plain)
    a, s = schedule.alpha_sigma(t)
    goal = 0.5 * target(x0, noise, a.view(-1, 1).float(), s.view(-1, 1).float(), "v") + 0.5 * -0.25
    half = diffusion_loss(student, x0, {}, t=t, noise=noise, teacher=teacher, teacher_weight=0.5, reduce=False)
    assert torch.allclose(half, (0.5 - goal).pow(2).mean(dim=1), atol=1e-6)
    # the guided term: sampling sees pred(u) + s (pred(c) - pred(u)), so errors with and without the
    # condition count s and 1 - s times; here the student over-reacts to the condition
    class Shifted(torch.nn.Module):
        def __init__(self, value, gain):
            super().__init__()
            self.value, self.gain = value, gain

        def forward(self, x, tt, shift=0.0):
            return torch.full_like(x, self.value + self.gain * shift)

    student, teacher = Denoiser(Shifted(0.5, 2.0), schedule, v), Denoiser(Shifted(-0.25, 1.0), schedule, v)
    got = diffusion_loss(student, x0, {"shift": 0.1}, t=t, noise=noise, teacher=teacher, uncond={"shift": 0.0},
                         guidance=3.0, reduce=False)
    e_c, e_u = 0.85, 0.75
    assert torch.allclose(got, torch.full((5,), e_c**2 + (3 * e_c - 2 * e_u) ** 2))
    # a teacher of another parametrization predicts another quantity
    eps_teacher = Denoiser(Const(0.0), schedule, DiffusionConfig(parametrization="eps"))
    with pytest.raises(ValueError, match="teacher predicts eps"):
        diffusion_loss(student, x0, {}, t=t, noise=noise, teacher=eps_teacher)
