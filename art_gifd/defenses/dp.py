"""
DP-SGD through Opacus: per-sample clipping and Gaussian noise on the client's update, with Opacus' privacy accounting.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from art_gifd.defenses.base import Defense, DefenseContext
from art_gifd.validation import GRADIENT_NORM_RANGE, check_choice, check_integer, check_number

#: Largest target epsilon: beyond it the guarantee bounds nothing, and Opacus' noise search no longer converges.
MAX_EPSILON = 1e6
#: Most DP-SGD steps an accounting covers (10^9 takes Opacus seconds; beyond, its noise search does not end).
MAX_DP_STEPS = 10**9

ACCOUNTANTS = ("rdp", "prv")
#: Largest delta accepted: delta is the probability that the guarantee fails, meant to be far below 1 / the data set
#: size; at large deltas the accountants return negative epsilons (RDP at delta = 0.5, PRV already at 0.1).
MAX_DELTA = 0.01
#: Largest epsilon (by RDP, an upper bound) the PRV accountant is asked for: its grid grows as the noise shrinks, and
#: beyond this vacuous guarantee (e^100) it needed more than 4 GB on settings where RDP answers in a millisecond.
PRV_MAX_EPSILON = 100.0
#: Noise multipliers accepted: far below 1e-12 (an almost noiseless update, epsilon about 1e25) RDP's arithmetic
#: divides by zero; above 1e6 the noise drowns any gradient and epsilon no longer changes.
NOISE_MULTIPLIER_RANGE = (1e-12, 1e6)


class DPSGD(Defense):
    """
    DP-SGD (Abadi et al. 2016) as Opacus runs it: per-sample gradients (Opacus ``GradSampleModule``) clipped to
    ``max_grad_norm``, summed, Gaussian noise of std ``noise_multiplier × max_grad_norm`` added to the sum, and the
    result divided by the batch size ``B`` (Opacus' ``DPOptimizer`` with ``loss_reduction="mean"``), so the shared
    update is a noisy *mean* whose noise has std ``noise_multiplier × max_grad_norm / B`` per entry.

    The guarantee ``(epsilon, delta)`` is Opacus' accountant (RDP by default, PRV optional) for the stated Poisson
    sampling rate and number of steps of the client's whole training. Opacus computes per-sample gradients on a copy
    of the model in train mode (dropout would be active); models it cannot handle (BatchNorm) are rejected with its
    own message. DP-SGD recomputes the update from the private batch, so it comes first in a
    :class:`~art_gifd.defenses.base.Compose`.
    """

    name = "dp-sgd"
    recomputes = True

    def __init__(
        self,
        noise_multiplier: float,
        max_grad_norm: float,
        sample_rate: float,
        steps: int,
        delta: float,
        accountant: str = "rdp",
    ) -> None:
        """
        :param noise_multiplier: Noise std relative to ``max_grad_norm``, positive.
        :param max_grad_norm: Per-sample clipping norm, positive.
        :param sample_rate: Poisson sampling rate of a training step (expected batch size / data set size), in (0, 1].
        :param steps: Number of DP-SGD steps the guarantee covers.
        :param delta: Target delta, in (0, :data:`MAX_DELTA`] (usually below 1 / data set size).
        :param accountant: Opacus accountant, ``"rdp"`` or ``"prv"``.
        """
        self.noise_multiplier = check_number(
            "noise_multiplier", noise_multiplier, *NOISE_MULTIPLIER_RANGE, closed="both"
        )
        self.max_grad_norm = check_number("max_grad_norm", max_grad_norm, *GRADIENT_NORM_RANGE, closed="both")
        self.sample_rate, self.steps, self.delta = _check_accounting(sample_rate, steps, delta, accountant)
        self.accountant = accountant
        self.epsilon = privacy_epsilon(noise_multiplier, sample_rate, steps, delta, accountant)

    @classmethod
    def for_epsilon(
        cls,
        epsilon: float,
        max_grad_norm: float,
        sample_rate: float,
        steps: int,
        delta: float,
        accountant: str = "rdp",
        epsilon_tolerance: float = 0.01,
    ) -> DPSGD:
        """
        DP-SGD with the noise multiplier that Opacus' ``get_noise_multiplier`` finds for a target epsilon.

        :param epsilon: Target epsilon, positive; the resulting :attr:`epsilon` is at most this (within the tolerance).
        :param max_grad_norm: Per-sample clipping norm.
        :param sample_rate: Poisson sampling rate.
        :param steps: Number of steps.
        :param delta: Target delta.
        :param accountant: ``"rdp"`` or ``"prv"``.
        :param epsilon_tolerance: Precision of Opacus' binary search, at least ``1e-9 · max(1, epsilon)``.
        """
        from opacus.accountants.utils import get_noise_multiplier

        check_number("epsilon", epsilon, 0.0, MAX_EPSILON, closed="right")
        # a tolerance finer than float64 can resolve never ends Opacus' bisection; NaN would end it at once, unsearched
        check_number("epsilon_tolerance", epsilon_tolerance, 1e-9 * max(1.0, epsilon), MAX_EPSILON, closed="both")
        _check_accounting(sample_rate, steps, delta, accountant)
        if accountant == "prv" and epsilon > PRV_MAX_EPSILON:
            raise ValueError(_prv_refusal(epsilon))
        try:
            sigma = get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant="rdp",
                epsilon_tolerance=epsilon_tolerance,
            )
            if accountant == "prv":
                sigma = _prv_noise(epsilon, sigma, sample_rate, steps, delta, epsilon_tolerance)
        except ValueError as err:  # Opacus: "The privacy budget is too low." (no finite noise reaches it)
            raise ValueError(
                f"epsilon={epsilon:g} cannot be reached at delta={delta:g} with sample_rate={sample_rate:g} and "
                f"{steps} steps ({err}): raise epsilon or delta, or lower sample_rate or steps."
            ) from None
        except (MemoryError, OverflowError, ZeroDivisionError) as err:
            raise ValueError(_accountant_failure(accountant, err)) from None
        return cls(sigma, max_grad_norm, sample_rate, steps, delta, accountant)

    def apply(self, grads: list[torch.Tensor], context: DefenseContext) -> list[torch.Tensor]:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        target = context.target
        module = copy.deepcopy(target.module).train()
        for p in module.parameters():
            p.requires_grad_(True)
        check_opacus_compatible(module)
        reduction = getattr(target.loss_fn, "reduction", "mean")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"DP-SGD needs a loss with reduction 'mean' or 'sum', got {reduction!r}.")
        wrapped = GradSampleModule(module, loss_reduction=reduction)
        optimizer = DPOptimizer(
            torch.optim.SGD(module.parameters(), lr=0.0),
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=int(context.x.shape[0]),
            loss_reduction=reduction,
            generator=context.generator,
        )
        dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in module.modules())
        device = context.x.device
        forked = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=dropout)
        with warnings.catch_warnings(), forked:
            warnings.filterwarnings("ignore", message="Full backward hook is firing")  # inputs need no gradients
            if dropout:  # the copy runs in train mode: its dropout masks come from the defence's seed too
                drawn = torch.randint(2**62, (1,), generator=context.generator, device=context.generator.device)
                torch.manual_seed(int(drawn))
            target.loss_fn(wrapped(target.preprocess(context.x)), context.labels).backward()
        optimizer.pre_step()
        return [p.grad.detach() for p in module.parameters()]

    def params(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "delta": self.delta,
            "accountant": self.accountant,
        }

    def privacy(self) -> tuple[float, float]:
        return self.epsilon, self.delta


def _check_accounting(sample_rate: float, steps: int, delta: float, accountant: str) -> tuple[float, int, float]:
    """Check what the accountant is given, and return ``sample_rate``, ``steps`` and ``delta`` as numbers."""
    check_choice("accountant", accountant, ACCOUNTANTS)
    return (
        check_number("sample_rate", sample_rate, 0.0, 1.0, closed="right"),
        check_integer("steps", steps, 1, MAX_DP_STEPS),
        check_number("delta", delta, 0.0, MAX_DELTA, closed="right"),
    )


def privacy_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """
    Epsilon of ``steps`` DP-SGD steps at ``noise_multiplier`` and Poisson ``sample_rate``, by Opacus' accountant.

    :param noise_multiplier: Noise std relative to the clipping norm.
    :param sample_rate: Poisson sampling rate.
    :param steps: Number of steps.
    :param delta: Target delta.
    :param accountant: ``"rdp"`` (default) or ``"prv"``.
    :raises ValueError: For a value out of range, naming it, or a guarantee the accountant cannot compute.
    """
    from opacus.accountants import create_accountant

    check_number("noise_multiplier", noise_multiplier, *NOISE_MULTIPLIER_RANGE, closed="both")
    _check_accounting(sample_rate, steps, delta, accountant)

    if accountant == "prv":  # RDP first: it bounds PRV's answer from above, in a millisecond and little memory
        bound = privacy_epsilon(noise_multiplier, sample_rate, steps, delta, "rdp")
        if bound > PRV_MAX_EPSILON:
            raise ValueError(_prv_refusal(bound))
    meter = create_accountant(mechanism=accountant)
    meter.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    try:
        epsilon = float(meter.get_epsilon(delta=delta))
    except (MemoryError, OverflowError, ZeroDivisionError, ValueError, RuntimeError) as err:  # PRV: a grid
        raise ValueError(_accountant_failure(accountant, err)) from None
    if not epsilon >= 0:
        raise ValueError(
            f"Opacus' {accountant.upper()} accountant returns epsilon {epsilon:g} for delta={delta:g}, which no "
            "guarantee has: lower delta (it should be far below 1 / the data set size)."
        )
    return epsilon


def _prv_noise(
    epsilon: float, rdp_sigma: float, sample_rate: float, steps: int, delta: float, tolerance: float
) -> float:
    """
    The noise multiplier at which PRV's epsilon is ``epsilon`` (within ``tolerance``, never above it), by bisection
    between RDP's answer (PRV's epsilon there is at most ``epsilon``: RDP bounds it from above) and the noise at which
    RDP's epsilon is :data:`PRV_MAX_EPSILON`, so that PRV is never asked where its grid outgrows memory (Opacus' own
    search can ask it at any smaller noise).
    """
    from opacus.accountants.utils import get_noise_multiplier

    low = get_noise_multiplier(
        target_epsilon=PRV_MAX_EPSILON, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant="rdp"
    )
    high = rdp_sigma
    if low >= high or privacy_epsilon(low, sample_rate, steps, delta, "prv") <= epsilon:
        return low
    while True:  # invariant: PRV's epsilon is above the target at low and at most the target at high
        middle = (low + high) / 2
        reached = privacy_epsilon(middle, sample_rate, steps, delta, "prv")
        if reached <= epsilon:
            high = middle
            if epsilon - reached <= tolerance:
                return high
        else:
            low = middle
        if high - low <= 1e-6 * high:
            return high


def _prv_refusal(epsilon: float) -> str:
    return (
        f"epsilon is about {epsilon:.3g}, above {PRV_MAX_EPSILON:g} (a vacuous guarantee), where the PRV accountant's "
        "grid can need tens of GB of memory: use accountant='rdp', or more noise."
    )


def _accountant_failure(accountant: str, err: BaseException) -> str:
    way_out = (
        "use accountant='rdp', or fewer steps or a larger noise_multiplier"
        if accountant == "prv"
        else "check that noise_multiplier, sample_rate and steps describe a real training"
    )
    return (
        f"Opacus' {accountant.upper()} accountant cannot evaluate these settings ({type(err).__name__}: "
        f"{' '.join(str(err).split())[:120]}): {way_out}."
    )


def check_opacus_compatible(module: nn.Module) -> None:
    """
    Raise ``ValueError`` with Opacus' own validation messages if Opacus cannot compute per-sample gradients of
    ``module`` (e.g. BatchNorm), and the fix.
    """
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(module, strict=False)
    if errors:
        raise ValueError(
            "Opacus cannot run DP-SGD on this model: "
            + " | ".join(str(e) for e in errors)
            + " Fix: model = opacus.validators.ModuleValidator.fix(model) (replaces BatchNorm by GroupNorm), then wrap "
            "the fixed model in a new PyTorchClassifier."
        )
