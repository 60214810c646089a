"""
Defences by name: build a :class:`~art_gifd.defenses.Defense` from a configuration name and its parameters.

The audit and the benchmark runner (``[[defenses]]`` ``type`` + ``params`` in both) share these names: ``prune``,
``clip``, ``gaussian``, ``laplace``, ``quantize``, ``sign``, ``soteria``, ``dp`` (from a target ``epsilon``, Opacus then
finds the noise, or from an explicit ``noise_multiplier``) and ``compose`` (a list of ``{type, params}`` tables applied
in order).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from art_gifd.defenses.base import Compose, Defense
from art_gifd.defenses.dp import DPSGD
from art_gifd.defenses.soteria import Soteria
from art_gifd.defenses.transforms import Clip, GaussianNoise, LaplacianNoise, Prune, Quantize, SignCompression


def _dp(**params: Any) -> DPSGD:
    """DP-SGD from a target ``epsilon`` (Opacus finds the noise) or from an explicit ``noise_multiplier``."""
    return DPSGD.for_epsilon(**params) if "epsilon" in params else DPSGD(**params)


def _compose(defenses: Any) -> Compose:
    """:class:`Compose` of a list of ``{type, params}`` tables."""
    if not isinstance(defenses, list) or not defenses:
        raise ValueError("compose needs params.defenses = a non-empty list of { type = ..., params = {...} } tables.")
    parts = []
    for i, item in enumerate(defenses):
        if not isinstance(item, Mapping) or set(item) - {"type", "params"} or "type" not in item:
            raise ValueError(f"defenses[{i}] of compose must be a table with keys type and params, got {item!r}.")
        parts.append(build_defense(str(item["type"]), dict(item.get("params", {}))))
    return Compose(parts)


#: Defence names → constructors (keyword arguments are the defence's parameters).
DEFENSES: dict[str, Callable[..., Defense]] = {
    "prune": Prune,
    "clip": Clip,
    "gaussian": GaussianNoise,
    "laplace": LaplacianNoise,
    "quantize": Quantize,
    "sign": SignCompression,
    "soteria": Soteria,
    "dp": _dp,
    "compose": _compose,
}


def defense_parameters(name: str) -> list[str]:
    """
    The parameter names a defence name accepts.

    :param name: One of :data:`DEFENSES`.
    :return: Its constructor's keyword arguments (for ``dp``: those of both ways to build it).
    """
    if name == "dp":
        names = [*inspect.signature(DPSGD).parameters, *inspect.signature(DPSGD.for_epsilon).parameters]
        return sorted(set(names) - {"cls", "self"})
    return list(inspect.signature(DEFENSES[name]).parameters)


def build_defense(name: str, params: Mapping[str, Any]) -> Defense:
    """
    Build a defence from its name and parameters.

    :param name: One of :data:`DEFENSES`.
    :param params: Its keyword arguments.
    :return: The defence.
    :raises ValueError: For an unknown name, unknown or missing parameters, or values the defence rejects.
    """
    if name not in DEFENSES:
        raise ValueError(f"unknown defence '{name}': choose one of none, {', '.join(DEFENSES)}.")
    accepted = defense_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"defence '{name}' has no parameter {', '.join(unknown)}; it accepts {', '.join(accepted)}.")
    try:
        return DEFENSES[name](**params)
    except TypeError as err:  # a missing required argument
        raise ValueError(f"defence '{name}': {err}; it accepts {', '.join(accepted)}.") from None
