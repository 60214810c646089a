"""
Priors by type: one place that knows how to build every generator from a configuration spec, for the audit and the
benchmark runner alike.

A spec is a mapping with a ``type`` of :data:`PRIOR_TYPES` and that type's keys, e.g. ``{"type": "embedded", "name":
"mnist32"}``, ``{"type": "face-dcgan"}``, ``{"type": "dcgan", "weights": "g.pt", "nz": 64, "ngf": 64, "nc": 1,
"image_size": 32}``, ``{"type": "stylegan2", "weights": "sg2.pt", "size": 64}`` or ``{"type": "biggan", "weights":
"biggan-deep-128/"}``. Paths are used as given (configuration readers resolve them first).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from art_gifd.priors.base import LayeredGenerator

if TYPE_CHECKING:
    from art_gifd.configfile import Checker, KeyPath

#: Prior types: (required keys, optional keys) besides ``type``.
PRIOR_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "embedded": ((), ("name",)),
    "face-dcgan": ((), ("weights",)),
    "dcgan": (("weights", "nz", "ngf", "nc", "image_size"), ("key", "sha256", "training_domain")),
    "stylegan2": (
        ("weights", "size"),
        ("style_dim", "n_mlp", "channel_multiplier", "key", "truncation", "noise", "sha256", "training_domain"),
    ),
    "biggan": (("weights",), ("truncation", "sha256", "training_domain")),
}
#: Keys of a spec that are positive integers, and the one that is a non-negative number.
INTEGER_KEYS = ("nz", "ngf", "nc", "image_size", "size", "style_dim", "n_mlp", "channel_multiplier")
NUMBER_KEYS = ("truncation",)


def read_prior_spec(check: Checker, raw: Any, path: KeyPath) -> dict[str, Any] | None:
    """
    A prior table of a configuration file, checked: its ``type`` and that type's keys (numbers in range, the weights
    path resolved and existing). Problems are recorded on ``check``, each with its key.

    :return: The spec for :func:`load_prior`, or ``None`` after a problem.
    """
    from art_gifd.configfile import REQUIRED, integer, number, string
    from art_gifd.priors.embedded import EMBEDDED_PRIORS

    if not isinstance(raw, Mapping) or "type" not in raw:
        check.add(path, f"a prior table needs a type: one of {', '.join(PRIOR_TYPES)}.")
        return None
    kind = check.get(raw, path, "type", string(tuple(PRIOR_TYPES)))
    if kind is None:
        return None
    required, optional = PRIOR_TYPES[kind]
    table = check.table(raw, path, ("type", *required, *optional))
    spec: dict[str, Any] = {"type": kind}
    where = "folder" if kind == "biggan" else "file"

    def weights(value: Any) -> str:
        return str(check.path(value, where, f"the generator's weights {where}"))

    for key in (*required, *optional):
        convert: Any
        if key == "weights":
            convert = weights
        elif key in INTEGER_KEYS:
            convert = integer(1)
        elif key in NUMBER_KEYS:
            convert = number(0, 1, low_open=True)
        else:
            convert = string(tuple(EMBEDDED_PRIORS)) if kind == "embedded" and key == "name" else string()
        value = check.get(table, path, key, convert, default=REQUIRED if key in required else None)
        if value is not None:
            spec[key] = value
    if kind == "embedded":
        spec.setdefault("name", "mnist32")
    return None if check.failed_under(path) else spec


def load_prior(spec: Mapping[str, Any], device: str) -> LayeredGenerator:
    """
    The frozen generator of a prior spec on ``device`` (cached per process: a worker loads a prior once).

    :raises FileNotFoundError: If its weights are missing (the message names the file).
    :raises ValueError: For an unknown type, missing or unknown keys, weights that do not fit the architecture, or a
                        device this machine does not have.
    """
    from art_gifd.validation import check_device

    kind = spec.get("type") if isinstance(spec, Mapping) else None
    if kind not in PRIOR_TYPES:
        raise ValueError(
            f"Unknown prior type {kind!r}: a prior spec is a mapping with a type of {', '.join(PRIOR_TYPES)}."
        )
    required, optional = PRIOR_TYPES[kind]
    missing = [k for k in required if k not in spec]
    unknown = sorted(set(spec) - {"type", *required, *optional})
    if missing or unknown:
        raise ValueError(
            f"A {kind!r} prior spec takes {', '.join(required) or 'no required keys'}"
            + (f" and optionally {', '.join(optional)}" if optional else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            + "."
        )
    device = str(check_device(device))
    return _load_prior(json.dumps(dict(spec), sort_keys=True), device, _weights_stamp(spec.get("weights")))


def _weights_stamp(weights: str | None) -> tuple | None:
    """
    Size and modification time of a weights file (of every file of a weights folder): part of the cache key, so
    that a checkpoint rewritten at the same path is loaded again rather than served from memory.
    """
    if weights is None:
        return None
    path = Path(weights)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    try:
        return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError:  # missing: the loader names it
        return None


@lru_cache(maxsize=4)
def _load_prior(spec_json: str, device: str, stamp: tuple | None) -> LayeredGenerator:  # stamp: only a cache key
    from art_gifd import priors
    from art_gifd.priors.checkpoints import load_state_dict_file, load_strict, replaced_initialisation

    spec = json.loads(spec_json)
    kind = spec.pop("type", None)
    if kind == "embedded":
        return priors.load_default_prior(spec.get("name", "mnist32"), device=device)
    if kind == "face-dcgan":
        return priors.load_face_dcgan(spec.get("weights"), device=device)
    if kind == "dcgan":
        with replaced_initialisation():
            generator = priors.DCGANGenerator(
                nz=spec["nz"],
                ngf=spec["ngf"],
                nc=spec["nc"],
                image_size=spec["image_size"],
                training_domain=spec.get("training_domain", "unknown"),
            )
        state = load_state_dict_file(spec["weights"], key=spec.get("key"), sha256=spec.get("sha256"))
        load_strict(generator, state, f"'{spec['weights']}'")
        return generator.to(device).freeze()
    if kind == "stylegan2":
        return priors.load_stylegan2(spec.pop("weights"), spec.pop("size"), device=device, **spec)
    if kind == "biggan":
        return priors.load_biggan(spec.pop("weights"), device=device, **spec)
    raise ValueError(f"Unknown prior type {kind!r}: choose one of {', '.join(PRIOR_TYPES)}.")


def prior_facts(spec: Mapping[str, Any], prior: LayeredGenerator) -> dict[str, Any]:
    """What a report says about a loaded prior: its name (embedded name, type or weights file), architecture and the
    SHA-256 of its weights where known."""
    from art_gifd.priors.checkpoints import sha256_of
    from art_gifd.priors.embedded import EMBEDDED_PRIORS

    kind = spec["type"]
    if kind == "embedded":
        name = spec.get("name", "mnist32")
        return {"name": name, **prior.describe(), "sha256": EMBEDDED_PRIORS[name]["sha256"]}
    weights = spec.get("weights")
    if weights is None:
        return {"name": kind, **prior.describe()}
    sha256 = spec.get("sha256") or (sha256_of(weights) if Path(weights).is_file() else None)  # a BigGAN folder: none
    return {"name": str(weights), "type": kind, **prior.describe(), "sha256": sha256}
