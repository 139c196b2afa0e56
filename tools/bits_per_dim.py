"""The DDPM variational bound in bits per dimension (Ho et al. 2020, section 3.3), for the numbers in results/.

Not part of the submission's script: a research metric of our own evaluation, computed for a checkpoint with
    from bits_per_dim import variational_bound_bpd
    variational_bound_bpd(model, schedule, images, labels)
where model, schedule come from rollNumber_05.load_model and images, labels from rollNumber_05.training_images.
"""
import math

import torch


def normal_cdf(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def decoder_nll(x0, mean, log_scale):
    """-log p(x_0 | x_1) with the discrete decoder of DDPM eq. 13: a Gaussian integrated over each of the
    256 pixel bins (edge bins extend to infinity). Returns nats per image."""
    centered, inv_std = x0 - mean, torch.exp(-log_scale)
    cdf_plus = normal_cdf(inv_std * (centered + 1 / 255))
    cdf_minus = normal_cdf(inv_std * (centered - 1 / 255))
    log_prob = torch.where(x0 < -0.999, torch.log(cdf_plus.clamp(min=1e-12)),
                           torch.where(x0 > 0.999, torch.log((1 - cdf_minus).clamp(min=1e-12)),
                                       torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))))
    return -log_prob.flatten(1).sum(1)


def vlb_timesteps(timesteps, points):
    """Log-spaced t in 1..T-1 and how many of the T-1 KL terms each stands for. The terms fall by orders of
    magnitude over the first hundred steps, so small t are evaluated one by one and large t share a point."""
    ts = torch.logspace(0, math.log10(timesteps - 1), points, dtype=torch.float64).round().long().unique()
    edges = torch.cat([torch.tensor([0.5]), (ts[:-1] + ts[1:]) / 2, torch.tensor([timesteps - 0.5])])
    return ts.tolist(), (edges[1:].ceil() - edges[:-1].ceil()).long().tolist()


@torch.inference_mode()
def variational_bound_bpd(model, schedule, images, labels, points=50, seed=0, batch_size=64):
    """The DDPM variational bound L = L_T + sum_{t>1} L_{t-1} + L_0 (section 3.3) in bits per dimension.
    L_0 (the discrete decoder) and the prior L_T exactly; the T-1 KL terms from `points` log-spaced t, each
    weighted by the terms it stands for. The reverse variance is the posterior's beta tilde_t, the mean comes
    from the unclipped x_0 estimate."""
    device = next(model.parameters()).device
    dims = images[0].numel()
    kl_ts, weights = vlb_timesteps(schedule.timesteps, points)
    generator = torch.Generator().manual_seed(seed)
    totals = torch.zeros(3)  # prior, decoder, KL terms; nats summed over images
    for start in range(0, len(images), batch_size):
        x0 = images[start:start + batch_size].to(device)
        y = None if labels is None else labels[start:start + batch_size].to(device)
        alpha_bar_T = schedule.alphas_cumprod[-1]
        prior_kl = 0.5 * (alpha_bar_T * x0 ** 2 + (1 - alpha_bar_T) - 1 - torch.log(1 - alpha_bar_T))
        totals[0] += float(prior_kl.sum())
        for t_now, weight in [(0, 1)] + list(zip(kl_ts, weights)):
            t = torch.full((len(x0),), t_now, device=device)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            x_t = schedule.q_sample(x0, t, noise)
            x0_hat = schedule.predict_x0(x_t, t, model(x_t, t, y).float())
            mean = schedule.q_posterior_mean(x0_hat, x_t, t)
            if t_now == 0:
                log_scale = 0.5 * torch.log(schedule.posterior_variance[1])
                totals[1] += float(decoder_nll(x0, mean, log_scale).sum())
            else:
                true_mean = schedule.q_posterior_mean(x0, x_t, t)
                kl = (true_mean - mean) ** 2 / (2 * schedule.posterior_variance[t_now])
                totals[2] += float(kl.sum()) * weight
    per_dim_bits = totals / (len(images) * dims * math.log(2))
    return {"bpd": float(per_dim_bits.sum()), "prior_bpd": float(per_dim_bits[0]),
            "decoder_bpd": float(per_dim_bits[1]), "diffusion_bpd": float(per_dim_bits[2]), "kl_points": len(kl_ts)}
