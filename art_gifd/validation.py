"""
Parameter validators shared by the attacks, defences, label helpers and configuration files.

Each names the parameter, the accepted range and the value it got. Python and numpy integers and reals are
accepted; booleans and strings are refused even where ``float()`` would convert them, so that a quoted number in a
configuration file or a flag passed by mistake is reported rather than silently read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
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


#: Largest learning rate, weight decay or search-distribution width accepted: beyond it float32 updates overflow.
MAX_RATE = 1e6
#: Largest weight of a term of a search objective (an image prior, BatchNorm statistics, group consistency). The
#: cosine matching loss is at most 2 (1e-7 … 1e-5 near a good reconstruction): a term weighted a millionfold already
#: drowns it, and far larger weights overflow float32 (about 3e38) in the term or in Adam's squared gradient, which
#: stalls the search.
MAX_WEIGHT = 1e6
#: Largest client batch (private samples behind one observation) accepted: every restart of a search holds that many
#: candidate images at once, and beyond it sizes overflow numpy's and torch's 64-bit counts long before any batch fits
#: a device (100,000 grey 32×32 images are 0.4 GB per restart, before their gradients).
MAX_BATCH_SIZE = 100_000
#: Most local steps of a FedAvg client's training (all epochs): far beyond real deployments, yet few enough that the
#: per-step plan of a replay is built and its memory estimated (and refused) in well under a second.
MAX_LOCAL_STEPS = 100_000
#: Range of an observed gradient's global norm that float32 matching can hold (its squares neither overflow nor
#: underflow). Within it the cosine distance is blind to the scale; the L2 distance needs the gradient's true scale.
GRADIENT_NORM_RANGE = (1e-15, 1e15)


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


#: Most torch threads (or worker processes, or CPUs a job asks for) accepted: far beyond any machine's cores, while a
#: hundred thousand OpenMP threads crash the process.
MAX_THREADS = 1024

#: Largest seed: torch generators take a 64-bit signed integer.
MAX_SEED = 2**63 - 1


def to_numpy(value: Any) -> np.ndarray:
    """
    ``value`` as a numpy array; a torch tensor is detached and moved to the CPU first (it may require grad), and a
    bfloat16 one, which numpy has no type for, is widened to float32 (exactly).
    """
    import torch

    if not isinstance(value, torch.Tensor):
        return np.asarray(value)
    value = value.detach().cpu()
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


def real_array(name: str, value: Any) -> np.ndarray:
    """
    ``value`` as a numpy array of real numbers (integer or floating dtype), by :func:`to_numpy`.

    :raises ValueError: For a masked array (its mask would be dropped), or complex, text, boolean or object values,
                        which numpy would cast (dropping an imaginary part, parsing text) rather than refuse.
    """
    if isinstance(value, np.ma.MaskedArray):
        raise ValueError(f"{name} is a masked array, whose mask would be ignored: pass value.filled(...) instead.")
    arr = to_numpy(value)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
    return arr


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


def check_flag(name: str, value: Any) -> bool:
    """
    Validate a boolean parameter (Python or numpy ``bool``) and return it as a ``bool``.

    :raises ValueError: For anything else, e.g. the string ``"false"``, which Python would read as true.
    """
    if not isinstance(value, bool | np.bool_):
        raise ValueError(_say(name, f"must be True or False, got {value!r}."))
    return bool(value)


def check_choice(name: str, value: Any, choices: Collection[str]) -> str:
    """
    Validate a parameter that names one of ``choices`` and return it; a value of any type (a list, an array) is
    refused with the same message rather than failing on the comparison.

    :raises ValueError: ``Unknown <name> <value>: use one of <choices>.``
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Unknown {name} {value!r}: use one of {tuple(choices)}.")
    return value


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


def check_output_folder(path: str | Path) -> Path:
    """
    Check that ``path`` is a folder that exists or can be created, and return it (resolved); nothing is left behind.

    The nearest existing ancestor must be a folder in which a folder can be made: a probe folder is created there
    and removed at once, which catches read-only file systems and pseudo file systems as well as permissions.

    :raises ValueError: Naming the path and what stands in the way.
    """
    import tempfile

    if not str(path).strip():  # e.g. an unset shell variable: not silently the current folder
        raise ValueError("the output folder is an empty path: give a folder, e.g. 'out' ('.' for the current one).")
    try:
        out = Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (before Python 3.13)
        raise ValueError(f"'{path}' cannot be resolved ({err}): give a folder path without a symlink loop.") from None
    if out.exists() and not out.is_dir():
        raise ValueError(f"'{out}' is a file: give a folder to write into.")
    ancestor = next(p for p in (out, *out.parents) if p.exists())
    if not ancestor.is_dir():
        raise ValueError(f"'{ancestor}' is a file, so the folder '{out}' cannot be created under it.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".art-gifd-probe-", dir=ancestor))
    except OSError as err:
        raise ValueError(
            f"cannot write into '{ancestor}' ({err.strerror or err}): choose an output folder you can write to."
        ) from None
    return out


def inside_image_folder(output: str | Path, folder: str | Path) -> str | None:
    """
    The problem with writing ``output`` (a file or folder) inside the image folder ``folder`` (class sub-folders), or
    ``None`` where it lies outside: a folder written there is read as one more class at the next load, moving the
    labels of the classes after it.
    """
    out, root = Path(output).expanduser().resolve(), Path(folder).expanduser().resolve()
    if out != root and root not in out.parents:
        return None
    return (
        f"'{out}' lies inside the image folder '{root}': what is written there would be read as a class folder at "
        "the next load, moving the labels; write it outside the image folder."
    )


#: What to do about weights on the meta device, for the messages that name them.
MATERIALISE = "load them with load_state_dict(state, assign=True), or build the module on the CPU"


def meta_entries(state: Mapping[str, Any]) -> list[str]:
    """Names of the tensors of a state dict on the meta device (never materialised: they hold no values)."""
    return [name for name, t in state.items() if getattr(t, "is_meta", False)]


def nonfinite_entries(state: Mapping[str, Any]) -> list[str]:
    """
    Names of the floating-point tensors (or numpy arrays, as a capture holds them) of a state dict that hold NaN or
    infinite values (sparse tensors too).
    """
    return [
        name
        for name, t in state.items()
        if (
            np.issubdtype(t.dtype, np.floating) and not np.isfinite(t).all()
            if isinstance(t, np.ndarray)
            else t.is_floating_point() and not bool((t.to_dense() if t.is_sparse else t).isfinite().all())
        )
    ]


def check_gradient(grads: Any, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """
    Validate an observed gradient against a model's parameters and return it as float arrays in parameter order.

    :param grads: Arrays or tensors in ``model.parameters()`` order, or a mapping parameter name → array.
    :param names: The model's parameter names, in ``parameters()`` order.
    :param shapes: Their shapes.
    :raises ValueError: On a wrong count, name, shape or dtype, non-finite values or a gradient that is zero
                        everywhere; the message names the first offending parameter.
    """
    import torch

    if isinstance(grads, Mapping):
        missing = [n for n in names if n not in grads]
        unknown = [n for n in grads if n not in names]
        if missing or unknown:
            raise ValueError(
                f"Gradient mapping does not match the model's parameters: missing {missing[:5]}, unknown "
                f"{unknown[:5]}. Keys must be names from model.named_parameters()."
            )
        items = [grads[n] for n in names]
    elif isinstance(grads, np.ndarray | torch.Tensor) and grads.dtype != object:
        raise ValueError(
            f"The observed gradient is one array of shape {tuple(grads.shape)}: pass a list of "
            f"{len(names)} arrays (one per parameter, in model.parameters() order) or a mapping name -> array."
        )
    elif isinstance(grads, Sequence | np.ndarray) and not isinstance(grads, str | bytes):
        items = list(grads)
        if len(items) != len(names):
            raise ValueError(
                f"Expected {len(names)} gradient arrays (one per parameter, in model.parameters() order), "
                f"got {len(items)}."
            )
    else:
        raise ValueError(
            f"The observed gradient must be a sequence of arrays in model.parameters() order or a mapping "
            f"name -> array, got {type(grads).__name__}."
        )
    out = []
    for name, shape, item in zip(names, shapes, items, strict=True):
        if isinstance(item, torch.Tensor) and item.is_meta:
            raise ValueError(
                f"Gradient of '{name}' is a meta tensor, which holds no values: pass the observed numbers."
            )
        if isinstance(item, torch.Tensor) and item.layout != torch.strided:
            item = item.to_dense()  # a sparse gradient (e.g. an embedding's) holds the same numbers
        arr = to_numpy(item)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"Gradient of '{name}' has dtype {arr.dtype}; expected a floating-point array.")
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(
                f"Gradient of '{name}' has shape {tuple(arr.shape)} but the parameter has shape {tuple(shape)}. Are "
                "the gradients in model.parameters() order and from this model?"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"Gradient of '{name}' contains NaN or infinite values.")
        out.append(arr)
    if all(not arr.any() for arr in out):
        raise ValueError("The observed gradient is zero everywhere: there is nothing to invert.")
    norm = math.sqrt(sum(float(np.sum(np.square(arr, dtype=np.float64))) for arr in out))
    low, high = GRADIENT_NORM_RANGE
    if not low <= norm <= high:
        raise ValueError(
            f"The observed gradient's norm is {norm:.3g}, outside [{low:g}, {high:g}], where float32 matching loses "
            "it to overflow or underflow: divide it by its norm for an attack with the cosine distance (blind to the "
            "scale); the L2 distance needs the gradient at its true scale."
        )
    return out
