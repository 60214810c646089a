"""
Parameter validators shared by the attacks, defences, label helpers and configuration files.

Each names the parameter, the accepted range and the value it got. Python and numpy integers and reals are
accepted; booleans and strings are refused even where ``float()`` would convert them, so that a quoted number in a
configuration file or a flag passed by mistake is reported rather than silently read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

#: Which ends of an interval are included, by name.
CLOSED = ("left", "right", "both", "neither")


def _say(name: str, text: str) -> str:
    """``"<name> <text>"``, or just the text for an unnamed value (a configuration key adds its own path)."""
    return f"{name} {text}" if name else text


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def check_number(
    name: str, value: Any, low: float = -math.inf, high: float = math.inf, *, closed: str = "left"
) -> float:
    """
    Validate a finite real parameter against an interval and return it as a float.

    :param name: Parameter name the message starts with (empty: the message starts with "must").
    :param value: The value.
    :param low: Lower bound.
    :param high: Upper bound.
    :param closed: Which bounds are included: ``"left"``, ``"right"``, ``"both"`` or ``"neither"``.
    :raises ValueError: Naming the parameter, the interval and the value.
    """
    if closed not in CLOSED:
        raise ValueError(f"closed must be one of {CLOSED}, got {closed!r}.")
    left, right = closed in ("left", "both"), closed in ("right", "both")
    interval = f"{'[' if left else '('}{low:g}, {high:g}{']' if right else ')'}"
    if not _is_real(value) or not math.isfinite(float(value)):
        raise ValueError(_say(name, f"must be a finite number in {interval}, got {value!r}."))
    number = float(value)
    above = number >= low if left else number > low
    below = number <= high if right else number < high
    if not (above and below):
        raise ValueError(_say(name, f"must lie in {interval}, got {value!r}."))
    return number


#: Largest seed: torch generators take a 64-bit signed integer.
MAX_SEED = 2**63 - 1


def check_integer(name: str, value: Any, low: int, high: int | None = None, *, optional: bool = False) -> int | None:
    """
    Validate an integer parameter in ``[low, high]`` and return it as an ``int`` (``None`` passes if ``optional``).

    :raises ValueError: Naming the parameter, the range and the value.
    """
    if optional and value is None:
        return None
    integral = isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
    if not integral or value < low or (high is not None and value > high):
        if high is not None:
            wanted = f"a positive integer (at most {high})" if low == 1 else f"an integer in [{low}, {high}]"
        else:
            wanted = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(_say(name, f"must be {wanted}{' or None' if optional else ''}, got {value!r}."))
    return int(value)


def check_device(device: Any) -> torch.device:
    """
    A ``torch.device`` for ``device`` (a string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``)
    that exists on this machine.

    :raises ValueError: For a malformed name, or an accelerator or index this machine does not have.
    """
    import torch

    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {device!r} is not a device name: use 'cpu', 'cuda', 'cuda:<index>' or 'mps'."
        ) from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r} was asked for but this machine has no usable CUDA GPU: use 'cpu'.")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {device!r} does not exist: this machine has {count} CUDA GPU(s), 0 … {count - 1}."
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} was asked for but MPS is not available here: use 'cpu'.")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported: use 'cpu', 'cuda', 'cuda:<index>' or 'mps'.")
    return resolved


def nonfinite_entries(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinite values."""
    return [name for name, t in state.items() if t.is_floating_point() and not bool(t.isfinite().all())]
