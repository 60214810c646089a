"""
Defences by name: build a :class:`~art_gifd.defenses.Defense` from a configuration name and its parameters.

The audit and the benchmark runner (``[[defenses]]`` ``type`` + ``params`` in both) share these names: ``prune``,
``clip``, ``gaussian``, ``laplace``, ``quantize``, ``sign``, ``soteria``, ``dp`` (from a target ``epsilon``, Opacus then
finds the noise, or from an explicit ``noise_multiplier``) and ``compose`` (a list of ``{type, params}`` tables applied
in order).
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from art_gifd.defenses.base import Compose, Defense
from art_gifd.defenses.dp import DPSGD
from art_gifd.defenses.soteria import Soteria
from art_gifd.defenses.transforms import Clip, GaussianNoise, LaplacianNoise, Prune, Quantize, SignCompression

if TYPE_CHECKING:
    from art_gifd.configfile import Checker, KeyPath


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


def format_value(value: Any) -> str:
    """A defence parameter as a label shows it: floats by ``:g``, lists and tables item by item, the rest as text."""
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={format_value(v)}" for k, v in value.items()) + "}"
    return f"{value:g}" if isinstance(value, float) else str(value)


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


def cached_defense(kind: str, params: Mapping[str, Any]) -> Defense | None:
    """
    :func:`build_defense`, cached per process (DP-SGD from a target epsilon runs Opacus' noise search once for a
    configuration's validation and its runs), and ``None`` for ``"none"``.

    :raises ValueError: As :func:`build_defense`.
    """
    return None if kind == "none" else _cached(kind, json.dumps(params, sort_keys=True))


@lru_cache(maxsize=256)
def _cached(kind: str, params_json: str) -> Defense:
    with warnings.catch_warnings():  # Opacus' search for a target epsilon warns about its range of RDP orders
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        return build_defense(kind, json.loads(params_json))


def _plain(value: Any) -> bool:
    """Whether a parameter value is made of numbers, text, booleans, lists and tables only (no TOML date or time)."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, str | int | float)


def check_one_baseline(check: Checker, kinds: list[tuple[int, str]], path: KeyPath) -> None:
    """
    Name a second ``type = "none"`` table among a configuration's ``[[defenses]]`` (``(index, type)`` of each table
    that was read): it would rerun the undefended baseline, or silently replace the first one's label.
    """
    baselines = [index for index, kind in kinds if kind == "none"]
    for index in baselines[1:]:
        check.add(
            (*path, index, "type"),
            f"the undefended baseline 'none' is already defenses[{baselines[0]}]: list it once (its label names it).",
        )


#: Keys of a ``[[defenses]]`` table, in an audit and in a benchmark profile.
DEFENSE_KEYS = ("type", "params", "adaptive", "label")

#: Most values of one strength grid: each is a whole setting (attacks on every batch, a utility run, and for DP-SGD a
#: noise calibration while the configuration is read), so a longer list is almost always a mistake.
MAX_STRENGTHS = 256


def read_defense_table(check: Checker, value: Any, path: KeyPath) -> dict[str, Any]:
    """
    One ``[[defenses]]`` table of a configuration file (audit or benchmark), checked and expanded, with
    :class:`~art_gifd.configfile.Stop` at its first problem: ``type`` (``none`` or a name of :data:`DEFENSES`),
    ``params`` (one of them may be a list: the strength grid; each point is built once, so a value the defence
    rejects is named here), ``adaptive`` (or ``[false, true]``: both attackers) and an optional ``label``.

    :return: ``label`` (``None`` when not given), ``type``, ``grid`` (the listed parameter or ``None``) and
             ``points``: one ``{"params", "strength", "adaptive"}`` per grid value and attacker.
    """
    from art_gifd.configfile import Stop, boolean, kind_of, row_label, string

    table = check.strict_table(value, path, DEFENSE_KEYS, required=("type",))
    kind = check.need(table["type"], (*path, "type"), string(["none", *DEFENSES]))
    accepted = defense_parameters(kind) if kind != "none" else []
    params = check.strict_table(table.get("params"), (*path, "params"), accepted)
    # compose takes a list of defences: it is one setting, never a grid
    grid = [k for k, x in params.items() if isinstance(x, list) and kind != "compose"]
    if len(grid) > 1:
        raise Stop(
            (*path, "params", grid[1]), f"only one parameter may be a list (the strength grid); {grid[0]} is one."
        )
    adaptive = table.get("adaptive", False)
    flags = [
        check.need(flag, (*path, "adaptive"), boolean)
        for flag in (adaptive if isinstance(adaptive, list) else [adaptive])
    ]
    if isinstance(adaptive, list) and not adaptive:
        raise Stop((*path, "adaptive"), "is an empty list, which gives no setting: write false, true or [false, true].")
    if kind == "none" and any(flags):
        raise Stop((*path, "adaptive"), "the baseline 'none' has nothing to replay: remove adaptive.")
    strengths = params[grid[0]] if grid else [None]
    if not strengths:
        raise Stop((*path, "params", grid[0]), "is an empty list: give at least one strength.")
    if len(strengths) > MAX_STRENGTHS:
        raise Stop(
            (*path, "params", grid[0]),
            f"has {len(strengths)} strengths, more than the {MAX_STRENGTHS} one grid may hold (each is a whole "
            "setting): thin the grid, or split it over several runs.",
        )
    for values, where in ((strengths, (*path, "params", grid[0] if grid else "")), (flags, (*path, "adaptive"))):
        if any(a == b for i, a in enumerate(values) for b in values[:i]):  # 1 and 1.0 are one setting
            raise Stop(where, f"has repeated values: {values!r}; give each setting once.")
    points = []
    for index, strength in enumerate(strengths):
        point = dict(params, **({grid[0]: strength} if grid else {}))
        for key, x in point.items():
            key_path = (*path, "params", key, index) if grid and key == grid[0] else (*path, "params", key)
            if (isinstance(x, dict | list) and kind != "compose") or not _plain(x):
                raise Stop(key_path, f"must be a number or a string, got {kind_of(x)}.")
        try:
            built = cached_defense(kind, point)
        except ValueError as exc:
            raise Stop((*path, "params", grid[0], index) if grid else (*path, "params"), str(exc)) from None
        if any(flags) and built is not None and not built.replayable:
            raise Stop(
                (*path, "adaptive"),
                f"a {kind} defence is random noise that an attacker cannot replay: adaptive would rerun the "
                "non-adaptive setting under a label that claims a stronger attacker. Remove adaptive.",
            )
        for flag in flags:
            points.append({"params": point, "strength": point[grid[0]] if grid else None, "adaptive": flag})
    label = check.need(table["label"], (*path, "label"), row_label) if "label" in table else None
    return {"label": label, "type": kind, "grid": grid[0] if grid else None, "points": points}
