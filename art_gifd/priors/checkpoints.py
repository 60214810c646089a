"""
Loading generator checkpoints safely: checksums, weights-only loading (a full pickle only when the user trusts the
file), the state dict's entry, and strict loading whose errors name the keys that do not fit.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from art_gifd.validation import nonfinite_entries

logger = logging.getLogger(__name__)


def sha256_of(path: str | Path) -> str:
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def replaced_initialisation() -> Iterator[None]:
    """
    Build a module whose weights a checkpoint then replaces: its random initialisation draws from a fork of torch's
    global generator, so that loading a prior leaves the caller's random stream as it was.
    """
    with torch.random.fork_rng(devices=[]):
        yield


def load_state_dict_file(
    path: str | Path, key: str | None = None, sha256: str | None = None, trust_checkpoint: bool = False
) -> dict[str, torch.Tensor]:
    """
    Load a state dict from a checkpoint file, safely.

    :param path: Checkpoint path.
    :param key: Entry of the checkpoint that holds the state dict (``None`` = the file is the state dict).
    :param sha256: Expected SHA-256 of the file; a mismatch raises ``ValueError``.
    :param trust_checkpoint: Allow a full (unsafe) pickle load when ``weights_only`` loading fails. Only for files
                             from a source you trust.
    :raises FileNotFoundError: If the file is missing.
    :raises ValueError: If the checksum does not match or the file is not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise FileNotFoundError(f"Weights file {what}: '{path}'. Pass the path of a local checkpoint file.")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256:
            raise ValueError(
                f"Checksum mismatch for '{path}': expected sha256 {sha256}, got {actual}. The file is corrupted or "
                "was replaced; reinstall art-gifd (or retrain it with benchmarks/train_prior.py)."
            )
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):  # torch.save's zip archive, or a pickle
        what = "is empty" if not head else "is neither a zip archive nor a pickle"
        raise ValueError(
            f"'{path}' is not a PyTorch checkpoint: the file {what}. Give the file that "
            "torch.save(model.state_dict(), path) wrote (a partial download or a renamed file of another format "
            "will not load)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # the archive pickles objects that are not tensors: a whole model, an optimiser
        if not trust_checkpoint:
            raise ValueError(
                f"Could not load '{path}' as a weights-only checkpoint: it pickles Python objects besides tensors "
                "(e.g. a whole model). Save the model's state dict instead (torch.save(model.state_dict(), path)); "
                "from Python, a full pickle from a source you trust loads with trust_checkpoint=True."
            ) from None
        logger.warning("Loading '%s' as a full pickle because trust_checkpoint=True.", path)
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises RuntimeError for TorchScript archives and damaged zips, EOFError too
        if "TorchScript" in str(err):
            raise ValueError(
                f"'{path}' is a TorchScript archive, not a state dict: give it as a TorchScript model "
                "(model.torchscript in an audit), or save the eager model's state dict."
            ) from None
        shown = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(err).split())).split(". ")[0][:200]  # torch colours it
        raise ValueError(
            f"Could not read the checkpoint '{path}' ({type(err).__name__}: {shown}): the file is damaged or "
            "truncated (e.g. an interrupted copy): copy or save it again."
        ) from None
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"Checkpoint '{path}' has no entry '{key}' (found: {found}).")
        state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"Checkpoint '{path}' does not hold a state dict (found {type(state).__name__}).")
    foreign = [f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if foreign:
        raise ValueError(
            f"Checkpoint '{path}' is not a state dict of tensors: {', '.join(foreign[:5])}. Give the entry that holds "
            "the weights (key=...)."
        )
    broken = nonfinite_entries(state)
    if broken:
        raise ValueError(f"Checkpoint '{path}' holds NaN or infinite weights (in {broken[:3]}): it is damaged.")
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """
    Load ``state`` into ``module`` strictly, naming missing, unexpected and mis-shaped keys in the error.

    :param module: Target module.
    :param state: State dict.
    :param source: Where the state came from (for the message).
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"Checkpoint {source} does not fit {type(module).__name__}: missing keys {missing[:10]}, unexpected keys "
            f"{unexpected[:10]}, shape mismatches {shapes[:10]}. Check that the architecture arguments you passed "
            f"to the loader match the checkpoint."
        )
    sparse = [k for k in own if state[k].layout != torch.strided]
    if sparse:
        raise ValueError(
            f"Checkpoint {source} holds sparse tensors ({sparse[:3]}): save a dense state dict "
            "({name: tensor.to_dense() for name, tensor in state.items()})."
        )
    # loading casts to the module's dtype: integer weights (a quantised export) would become a model of zeros
    cast = [
        f"{k} ({str(state[k].dtype).removeprefix('torch.')})"
        for k in own
        if own[k].is_floating_point() and not state[k].is_floating_point()
    ]
    if cast:
        raise ValueError(
            f"Checkpoint {source} holds integer tensors where {type(module).__name__} has floating-point ones "
            f"({cast[:3]}): it is quantised or not a float model's state dict. Save the float model's state_dict."
        )
    module.load_state_dict(state, strict=True)
