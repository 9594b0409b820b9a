"""Putting an adversarial image on 8-bit levels without leaving, or wasting, its budget.

L-inf: a budget that is a whole number of levels (k/255) keeps the rounded image within the budget exactly, so
off-grid budgets are snapped to the nearest level (`snap_linf`) and the attack reports the budget it used.

L2: rounding each value to its nearest level, then scaling back into the ball, then rounding towards the clean
image (the old scheme) loses almost the whole perturbation on large images: at 224 px an L2 budget of 1.0 is
0.66 levels RMS per value, so most values round to zero. `round_l2` instead picks the integer perturbation (in
levels) that is most aligned with the attack's perturbation among those inside the ball: a greedy knapsack on
(gain |d_i| per level, cost 2j+1 for the j-th level of value i), which keeps the norm close to eps.
"""

from __future__ import annotations

import torch

LEVELS = 255


def snap_linf(eps: float) -> float:
    """The nearest multiple of 1/255 (as k/255 in float, so that rounded images stay within it exactly)."""
    return round(eps * LEVELS) / LEVELS


def toward_levels(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Move each pixel to the nearest 8-bit level between it and `x` (float noise up to 1e-4 level is ignored).

    Stepping towards x never enlarges |x_adv - x|, so a budget that held still holds, and the result is on
    8-bit levels whenever x is.
    """
    level = x_adv * LEVELS
    up = torch.floor(level + 1e-4) / LEVELS
    down = torch.ceil(level - 1e-4) / LEVELS
    return torch.where(x_adv > x, torch.maximum(up, x), torch.minimum(down, x))


def _levels(gain: torch.Tensor, cap: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Levels per value when every level j with gain / (2j+1) >= lam is taken (at most `cap`)."""
    return torch.minimum(torch.floor((gain / lam + 1) / 2), cap)


def round_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """x_adv on 8-bit levels (when x is) with ||x_q - x||_2 <= eps and the perturbation kept aligned with x_adv - x.

    Each value may move towards x_adv by whole levels, never past the level just beyond x_adv. The j-th level of
    value i adds |d_i| to <q, d> and 2j+1 to ||q||^2 (in levels); levels are taken best ratio first until the
    budget (eps * 255)^2 is spent: a bisection on the ratio threshold, then the leftover budget is filled with
    the best next levels.
    """
    delta = ((x_adv - x) * LEVELS).flatten(1)
    gain, sign = delta.abs(), delta.sign()
    cap = torch.ceil(gain - 1e-4).clamp_min(0)
    budget = torch.full((len(delta), 1), (eps * LEVELS) ** 2 * (1 - 1e-6), dtype=delta.dtype, device=delta.device)
    lo = torch.full_like(budget, 1e-6)
    hi = gain.amax(1, keepdim=True).clamp_min(1e-6) * 1.01  # above the best ratio: nothing taken, feasible
    for _ in range(50):  # the threshold is found to a factor of (hi/lo)^(2^-50) ~ 1 + 1e-13
        mid = (lo * hi).sqrt()
        fits = (_levels(gain, cap, mid) ** 2).sum(1, keepdim=True) <= budget
        hi, lo = torch.where(fits, mid, hi), torch.where(fits, lo, mid)
    q = _levels(gain, cap, hi)
    left = budget - (q**2).sum(1, keepdim=True)
    # fill what is left with the next level of each value, best ratio first (a prefix that fits)
    cost = 2 * q + 1
    ratio = torch.where(q < cap, gain / cost, torch.zeros_like(gain))
    order = ratio.argsort(1, descending=True)
    take = (cost.gather(1, order).cumsum(1) <= left) & (ratio.gather(1, order) > 0)
    q = q + torch.zeros_like(q).scatter(1, order, take.to(q.dtype))
    base = x.flatten(1) * LEVELS
    on_grid = (base - base.round()).abs() < 1e-3
    levels = torch.where(on_grid, base.round() + sign * q, base + sign * q).clamp(0, LEVELS)
    return (levels / LEVELS).view_as(x)
