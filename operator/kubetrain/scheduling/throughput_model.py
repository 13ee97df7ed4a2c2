"""Step time of a data-parallel job against replicas, nodes spanned and per-replica batch.

The model form is Pollux's (OSDI'21), written here from the paper's formulas:

- compute:  T_c = alpha_c + beta_c * local_batch
- sync:     T_s = alpha + beta * max(replicas - 2, 0), with (alpha_r, beta_r) when every replica
            is on one node and (alpha_n, beta_n) when the job spans nodes; no sync with one replica
- step:     T = (T_c^gamma + T_s^gamma)^(1/gamma), gamma in [1, 10]: 1 = compute and all-reduce
            never overlap, large = they overlap fully (T -> max(T_c, T_s)); with gradient
            accumulation over k micro-batches, (k - 1) T_c more.

``fit`` recovers the seven parameters from observed (nodes, replicas, local batch, step time)
points by minimising the squared error of log step time (so a 10 ms and a 1 s job weigh the
same), with a damped Gauss-Newton (Levenberg-Marquardt) loop in pure Python: the operator image
has no numpy or scipy, and seven parameters over a few hundred points need neither.
A parameter that no observation can move (no multi-replica point: the sync terms; no multi-node
point: the cross-node terms) stays at its prior, which is optimistic on purpose: a job that has
only run on one GPU is predicted to scale well, so the allocator lets it try, and the first
observations at the larger size correct the model (Pollux's exploration argument).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

GAMMA_MIN, GAMMA_MAX = 1.0, 10.0


@dataclass(frozen=True)
class StepTimeParams:
    alpha_c: float  # s per step, fixed compute cost
    beta_c: float  # s per sample of the per-replica batch
    alpha_r: float  # s, all-reduce within one node
    beta_r: float  # s per replica beyond two, within one node
    alpha_n: float  # s, all-reduce across nodes
    beta_n: float  # s per replica beyond two, across nodes
    gamma: float  # compute/sync overlap, 1..10

    def step_time(self, replicas: int, nodes: int, local_batch: float, accum_steps: int = 1) -> float:
        """Seconds per optimizer step; ``local_batch`` is one micro-batch, run ``accum_steps`` times per step.

        Gradient accumulation (a per-replica batch larger than memory allows) adds micro-steps
        that do not synchronise, so only the last one overlaps with the all-reduce.
        """
        t_c = self.alpha_c + self.beta_c * local_batch
        extra_micro = (accum_steps - 1) * t_c
        if replicas <= 1:
            return extra_micro + t_c
        extra = max(replicas - 2, 0)
        t_s = (self.alpha_n + self.beta_n * extra) if nodes > 1 else (self.alpha_r + self.beta_r * extra)
        g = self.gamma
        return extra_micro + (t_c ** g + t_s ** g) ** (1.0 / g)

    def samples_per_second(self, replicas: int, nodes: int, local_batch: float, accum_steps: int = 1) -> float:
        return replicas * local_batch * accum_steps / self.step_time(replicas, nodes, local_batch, accum_steps)


@dataclass(frozen=True)
class StepObservation:
    replicas: int
    nodes: int
    local_batch: float  # one micro-batch
    step_time: float  # seconds, as the trainer reports it (mean over a window)
    accum_steps: int = 1


# The priors a parameter keeps when nothing observed can move it: sync costs ~0 (optimistic
# scaling, see the module docstring), no overlap.
_PRIOR = StepTimeParams(alpha_c=0.1, beta_c=0.001, alpha_r=1e-4, beta_r=1e-6, alpha_n=1e-4, beta_n=1e-6, gamma=1.0)


def _to_theta(p: StepTimeParams) -> list[float]:
    # Positive parameters as logs, gamma through a logistic onto [1, 10]: the search is unconstrained.
    u = min(max((p.gamma - GAMMA_MIN) / (GAMMA_MAX - GAMMA_MIN), 1e-6), 1 - 1e-6)
    return [math.log(max(v, 1e-12)) for v in (p.alpha_c, p.beta_c, p.alpha_r, p.beta_r, p.alpha_n, p.beta_n)] + [
        math.log(u / (1 - u))]


def _from_theta(t: Sequence[float]) -> StepTimeParams:
    pos = [math.exp(min(max(x, -40.0), 20.0)) for x in t[:6]]
    gamma = GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) / (1.0 + math.exp(-min(max(t[6], -40.0), 40.0)))
    return StepTimeParams(*pos, gamma=gamma)


def _residuals(theta: Sequence[float], obs: Sequence[StepObservation]) -> list[float]:
    p = _from_theta(theta)
    return [math.log(p.step_time(o.replicas, o.nodes, o.local_batch, o.accum_steps)) - math.log(o.step_time) for o in obs]


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (7x7)."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        piv = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[piv] = m[piv], m[c]
        d = m[c][c] if abs(m[c][c]) > 1e-300 else 1e-300
        for r in range(c + 1, n):
            f = m[r][c] / d
            if f:
                for k in range(c, n + 1):
                    m[r][k] -= f * m[c][k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        s = m[r][n] - sum(m[r][k] * x[k] for k in range(r + 1, n))
        x[r] = s / (m[r][r] if abs(m[r][r]) > 1e-300 else 1e-300)
    return x


def _initial(obs: Sequence[StepObservation]) -> StepTimeParams:
    """Compute terms from the single-replica points (a line through step time vs batch), the rest at the prior."""
    single = [o for o in obs if o.replicas <= 1] or list(obs)
    xs = [o.local_batch for o in single]
    ys = [o.step_time / o.accum_steps for o in single]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else my / max(mx, 1.0) / 2
    slope = max(slope, my / max(mx, 1.0) * 1e-3)
    alpha_c = max(my - slope * mx, my * 0.05)
    multi = [o.step_time for o in obs if o.replicas > 1]
    sync = max(min(multi) - my, my * 0.1) if multi else _PRIOR.alpha_r
    return StepTimeParams(alpha_c, slope, sync, _PRIOR.beta_r, sync, _PRIOR.beta_n, 1.5 if multi else 1.0)


def fit(observations: Sequence[StepObservation], initial: StepTimeParams | None = None,
        iterations: int = 100) -> StepTimeParams:
    """Least squares on log step time; see the module docstring for the parameters no point can move."""
    obs = [o for o in observations if o.step_time > 0 and o.replicas >= 1]
    if not obs:
        raise ValueError("no step-time observations to fit")
    theta = _to_theta(initial or _initial(obs))
    movable = [True, True, any(o.replicas > 1 and o.nodes == 1 for o in obs),
               any(o.replicas > 2 and o.nodes == 1 for o in obs), any(o.nodes > 1 for o in obs),
               any(o.replicas > 2 and o.nodes > 1 for o in obs), any(o.replicas > 1 for o in obs)]
    idx = [i for i, m in enumerate(movable) if m]
    r = _residuals(theta, obs)
    cost = sum(x * x for x in r)
    lam = 1e-3
    h = 1e-6
    for _ in range(iterations):
        # Forward-difference Jacobian over the movable parameters.
        jac = []
        for i in idx:
            t2 = list(theta)
            t2[i] += h
            jac.append([(a - b) / h for a, b in zip(_residuals(t2, obs), r)])
        jtj = [[sum(a * b for a, b in zip(jac[i], jac[k])) for k in range(len(idx))] for i in range(len(idx))]
        jtr = [sum(a * b for a, b in zip(jac[i], r)) for i in range(len(idx))]
        improved = False
        while lam < 1e10:
            a = [[jtj[i][k] + (lam * (jtj[i][i] + 1e-9) if i == k else 0.0) for k in range(len(idx))]
                 for i in range(len(idx))]
            step = _solve(a, [-x for x in jtr])
            t_new = list(theta)
            for i, s in zip(idx, step):
                t_new[i] += s
            r_new = _residuals(t_new, obs)
            c_new = sum(x * x for x in r_new)
            if c_new < cost:
                done = cost - c_new < 1e-12 * max(cost, 1e-30)
                theta, r, cost = t_new, r_new, c_new
                lam = max(lam / 3, 1e-9)
                improved = True
                break
            lam *= 4
        if not improved or done:
            break
    return _from_theta(theta)


def rms_log_error(params: StepTimeParams, observations: Sequence[StepObservation]) -> float:
    """Root-mean-square of log(predicted / observed): 0.1 is about a 10% typical error."""
    r = [math.log(params.step_time(o.replicas, o.nodes, o.local_batch, o.accum_steps) / o.step_time)
         for o in observations]
    return math.sqrt(sum(x * x for x in r) / len(r))
