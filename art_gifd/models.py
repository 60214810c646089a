"""
Small federated-learning models used by the demo, the tests and the CPU benchmarks.

- :func:`lenet`: the LeNet of DLG (Zhu et al. 2019): three sigmoid convolutions and a linear head, weights uniform in
  ``±0.5``. Smooth and shallow, the classic easy target of gradient inversion.
- :func:`convnet`: a small ReLU ConvNet with default PyTorch initialisation; piecewise-linear, harder to invert.
- :func:`convnet_bn`: the same ConvNet with BatchNorm after each convolution, whose running statistics are those of
  the 4,000 prior-training digits (a model that has seen data, for BatchNorm-statistics attacks such as GI).
- :func:`resnet18`: a ResNet-18 (torchvision's BasicBlock layout) with a small-input stem, freshly initialised; the FL
  model of the GPU benchmark profile (64×64 RGB images).

:func:`build_model` builds them by name (:data:`MODELS`); :func:`load_user_model` loads a user's model from a factory
and its weights or from a TorchScript file, as an audit does.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODELS = ("lenet", "convnet", "convnet-bn", "resnet18")


def _global_rng_restored(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """A model builder that may seed torch's global generator, run on a fork of it: the caller's state is put back."""

    @functools.wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            return build(*args, **kwargs)

    return wrapper


@_global_rng_restored
def lenet(in_channels: int = 1, image_size: int = 32, num_classes: int = 10, seed: int = 0) -> nn.Sequential:
    """DLG's LeNet with sigmoid activations and uniform(-0.5, 0.5) weights, seeded (the global RNG left as it was)."""
    torch.manual_seed(seed)
    side = image_size // 4
    net = nn.Sequential(
        nn.Conv2d(in_channels, 12, 5, padding=2, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=1),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(12 * side * side, num_classes),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.rand(p.shape, generator=generator) - 0.5)
    return net


@_global_rng_restored
def convnet(in_channels: int = 1, image_size: int = 32, num_classes: int = 10, seed: int = 0) -> nn.Sequential:
    """
    A three-layer ReLU ConvNet with a linear head, PyTorch default initialisation, seeded (the global RNG is left as
    it was).
    """
    torch.manual_seed(seed)
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * side * side, num_classes),
    )


def convnet_bn(in_channels: int = 1, image_size: int = 32, num_classes: int = 10, seed: int = 0) -> nn.Sequential:
    """:func:`convnet` with BatchNorm; running statistics from the ``mnist32`` train split (eval mode)."""
    from art_gifd.data import load_mnist32

    if (in_channels, image_size) != (1, 32):
        raise ValueError("convnet_bn takes its BatchNorm statistics from 1x32x32 digits: use in_channels=1, 32 px.")
    layers: list[nn.Module] = []
    for module in convnet(in_channels, image_size, num_classes, seed):
        layers.append(module)
        if isinstance(module, nn.Conv2d):
            layers.append(nn.BatchNorm2d(module.out_channels, momentum=None))  # cumulative running average
    net = nn.Sequential(*layers).train()
    images, _ = load_mnist32("train")
    with torch.no_grad():
        for start in range(0, len(images), 500):
            net(torch.as_tensor(images[start : start + 500]))
    return net.eval()


def resnet18(in_channels: int = 3, image_size: int = 64, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """
    ResNet-18 for small images: torchvision's ResNet with BasicBlocks ``[2, 2, 2, 2]`` and BatchNorm, whose ImageNet
    stem (7×7 stride-2 convolution and max-pooling) is replaced by one 3×3 stride-1 convolution, as is usual for
    32×32 and 64×64 inputs. Initialised with torchvision's scheme under ``seed`` (the global RNG is left untouched).

    BatchNorm keeps its initial running statistics (mean 0, variance 1). Attacks and clients see the model through
    :class:`~art_gifd.federated.TargetModel`: in eval mode (the default) every BatchNorm is a fixed per-channel
    affine map, so each sample's output is independent of the rest of the batch and of the restarts; with
    ``train_mode=True`` it normalises with the statistics of each client batch instead.

    :param in_channels: Image channels.
    :param image_size: Side of the square input images, at least 8 (the last stage then works on 1×1 features).
    :param num_classes: Number of classes.
    :param seed: Seed of the weight initialisation.
    :raises ValueError: If ``in_channels`` or ``image_size`` is out of range.
    """
    from torchvision.models.resnet import BasicBlock, ResNet

    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}.")
    if image_size < 8:
        raise ValueError(f"resnet18 needs images of at least 8×8 (three stride-2 stages), got image_size={image_size}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net.eval()


def build_model(
    name: str, in_channels: int = 1, image_size: int = 32, num_classes: int = 10, seed: int = 0
) -> nn.Module:
    """
    Build one of :data:`MODELS` by name.

    :raises ValueError: For another name, or channels, image size (at least 8: the models halve it thrice) or class
                        count (at least 2) out of range.
    """
    from art_gifd.validation import check_integer

    check_integer("in_channels", in_channels, 1)
    check_integer("image_size", image_size, 8)
    check_integer("num_classes", num_classes, 2)
    factories = {"lenet": lenet, "convnet": convnet, "convnet-bn": convnet_bn, "resnet18": resnet18}
    if name not in factories:
        raise ValueError(f"Unknown model '{name}': choose one of {', '.join(MODELS)}.")
    return factories[name](in_channels, image_size, num_classes, seed)


def make_classifier(model: nn.Module, input_shape: tuple[int, ...], nb_classes: int = 10, device: str = "cpu"):
    """
    Wrap ``model`` in an ART ``PyTorchClassifier`` with cross-entropy loss and inputs in ``[0, 1]``.

    :raises ValueError: If the model does not run on ``input_shape`` or does not give ``nb_classes`` outputs.
    """
    from art.estimators.classification import PyTorchClassifier

    check_model(model, tuple(input_shape), nb_classes)

    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=nb_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if str(device).startswith("cuda") else "cpu",
    )


# ------------------------------------------------------------------------------------------------ a user's model


class ModelLoadError(ValueError):
    """A user's model cannot be loaded; :attr:`key` names the setting at fault (``factory``, ``weights``, …)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def import_callable(spec: str, search: Path | None = None) -> Callable[..., Any]:
    """
    The callable named by ``"module:attribute"`` (``attribute`` may be dotted).

    :param search: A folder searched first for the module (e.g. the configuration file's, so that a module beside
                   it is found wherever the command runs); ``None``: ``sys.path`` only.
    :raises ValueError: If the spec is malformed, the module cannot be imported or the attribute is missing or not
                        callable.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"must be 'module:callable' (e.g. 'my_package.models:build_net'), got '{spec}'.")
    if search is not None:
        sys.path.insert(0, str(search))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        where = f"'{search}' (the configuration's folder) or " if search is not None else ""
        raise ValueError(
            f"cannot import module '{module_name}': {err}: put it in {where}an installed package, or add its folder "
            "to PYTHONPATH."
        ) from None
    except (Exception, SystemExit) as err:  # the module's own code failed on import (a syntax error, a missing file)
        raise ValueError(f"importing module '{module_name}' failed: {type(err).__name__}: {err}.") from None
    finally:
        if search is not None:
            sys.path.remove(str(search))
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"module '{module_name}' has no attribute '{attribute}'.")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"'{spec}' is not callable.")
    return target


def load_user_model(
    factory: str | None = None,
    factory_kwargs: Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
    weights_key: str | None = None,
    torchscript: str | Path | None = None,
    input_shape: tuple[int, ...] = (1, 32, 32),
    search: Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """
    A user's model: built by a factory (``"module:callable"`` called with ``factory_kwargs``; its module looked for
    in ``search`` first, see :func:`import_callable`) with an optional state dict (loaded strictly with
    ``torch.load(weights_only=True)``; ``weights_key`` picks it out of a checkpoint), or converted from a TorchScript
    file (:func:`torchscript_to_module`).

    :return: The module and its facts for a report (source, files and their SHA-256, class, parameter count).
    :raises ModelLoadError: Naming the setting at fault and what is wrong.
    """
    from art_gifd.priors.checkpoints import load_state_dict_file, load_strict, sha256_of
    from art_gifd.validation import nonfinite_entries

    if torchscript is not None:
        file = Path(torchscript)
        try:
            module = torchscript_to_module(file, tuple(input_shape))
        except ValueError as err:
            raise ModelLoadError("torchscript", str(err)) from None
        facts = {"source": "torchscript", "torchscript": str(file), "sha256": sha256_of(file)}
        return module, {**facts, **_module_facts(module)}
    if factory is None:
        raise ModelLoadError("factory", 'give factory = "module:callable" (plus optional weights) or torchscript.')
    if not isinstance(factory_kwargs, Mapping | None):
        raise ModelLoadError("factory_kwargs", f"must be a table of keyword arguments, got {factory_kwargs!r}.")
    try:
        build = import_callable(factory, search)
    except ValueError as err:
        raise ModelLoadError("factory", str(err)) from None
    grad_enabled, default_dtype = torch.is_grad_enabled(), torch.get_default_dtype()
    try:
        module = build(**dict(factory_kwargs or {}))
    except TypeError as err:  # the arguments given, or (none given) the factory itself
        raise ModelLoadError(
            "factory_kwargs" if factory_kwargs else "factory", f"calling {factory} failed: {err}."
        ) from None
    except (Exception, SystemExit) as err:  # the user's factory may raise anything, or even exit
        raise ModelLoadError("factory", f"calling {factory} failed: {type(err).__name__}: {err}.") from None
    changed = [
        what
        for what, before, after in (
            ("gradient computation", grad_enabled, torch.is_grad_enabled()),
            ("the default dtype", default_dtype, torch.get_default_dtype()),
        )
        if before != after
    ]
    if changed:  # every later computation would inherit them: put them back, and say where they came from
        torch.set_grad_enabled(grad_enabled)
        torch.set_default_dtype(default_dtype)
        raise ModelLoadError(
            "factory",
            f"calling {factory} changed torch's global settings ({', '.join(changed)}): build the model without "
            "changing them (torch.set_grad_enabled, torch.set_default_dtype).",
        )
    if not isinstance(module, nn.Module):
        raise ModelLoadError("factory", f"must return a torch.nn.Module, returned {type(module).__name__}.")
    unready = [
        n
        for n, t in [*module.named_parameters(), *module.named_buffers()]
        if isinstance(t, nn.parameter.UninitializedParameter | nn.parameter.UninitializedBuffer) or t.is_meta
    ]
    if unready:
        raise ModelLoadError(
            "factory",
            f"the model's tensors {unready[:3]} hold no data yet (lazy modules such as nn.LazyLinear, or the meta "
            "device): run the model once on an input, or build it on the CPU, before returning it.",
        )
    if weights_key is not None and weights is None:
        raise ModelLoadError("weights_key", "picks the state dict out of a weights file, and no weights are given.")
    facts: dict[str, Any] = {"source": "factory", "factory": factory, "weights": None, "sha256": None}
    if weights is not None:
        file = Path(weights)
        try:
            load_strict(module, load_state_dict_file(file, weights_key), f"'{file}'")
        except (FileNotFoundError, ValueError) as err:
            raise ModelLoadError("weights", str(err)) from None
        facts.update(weights=str(file), sha256=sha256_of(file))
    broken = nonfinite_entries(module.state_dict())
    if broken:
        key = "weights" if weights is not None else "factory"
        raise ModelLoadError(key, f"the model's weights hold NaN or infinite values (in {broken[:3]}): it is damaged.")
    return module, {**facts, **_module_facts(module)}


def check_model(module: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> None:
    """
    Run a copy of ``module`` (in eval mode) on a zero batch of two images of ``input_shape``: the output must be
    ``(2, num_classes)``.

    :raises ModelLoadError: With key ``input_shape`` if the forward pass fails, ``num_classes`` if the output's shape
                            differs.
    """
    from art_gifd.validation import MATERIALISE, meta_entries

    shape = tuple(input_shape)
    meta = meta_entries(module.state_dict())
    if meta:
        raise ModelLoadError(
            "factory", f"the model's weights {meta[:3]} are on the meta device (no values): {MATERIALISE}."
        )
    probe = copy.deepcopy(module).eval()
    try:
        with torch.no_grad():
            out = probe(torch.zeros(2, *shape, device=next(probe.parameters(), torch.empty(0)).device))
    except Exception as err:  # any failure of the user's forward pass
        raise ModelLoadError("input_shape", f"the model fails on a batch of shape {(2, *shape)}: {err}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelLoadError(
            "num_classes",
            f"the model's output for a batch of 2 has shape {found}, but num_classes = {num_classes} needs "
            f"(2, {num_classes}).",
        )
    if not torch.isfinite(out).all():
        raise ModelLoadError(
            "factory", "the model's output for a zero batch holds NaN or infinite values: it is damaged."
        )


def _module_facts(module: nn.Module) -> dict[str, Any]:
    return {
        "class": type(module).__name__,
        "parameters": int(sum(p.numel() for p in module.parameters())),
        "model_sha256": module_digest(module),
    }


def module_digest(module: nn.Module) -> str:
    """
    SHA-256 of the model as built: its structure (``repr``, which holds a converted graph's code) and every tensor of
    its state dict. A factory that loads its own weights, or whose code changed, gives another digest, so results
    keyed by it are never taken for another model's.
    """
    digest = hashlib.sha256(repr(module).encode())
    for name, tensor in module.state_dict().items():
        data = tensor.detach().cpu()
        data = data.to_dense() if data.is_sparse else data
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def torchscript_to_module(path: Path, input_shape: tuple[int, ...]) -> nn.Module:
    """
    Load a TorchScript file and convert it to an eager ``torch.fx`` module that the attacks can differentiate through
    with ``torch.func`` (TorchScript modules refuse ``functional_call``).

    The conversion uses PyTorch's TorchScript → ``torch.export`` converter, re-exports with a dynamic batch dimension,
    turns the TorchScript parameters back into parameters, and checks the result against the TorchScript module on a
    random batch of two.

    :param path: A file written by ``torch.jit.save``.
    :param input_shape: ``(C, H, W)`` of one input.
    :raises ValueError: If the file cannot be loaded or converted, or the converted module disagrees with it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
            scripted = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:  # torch.jit.load raises RuntimeError or ValueError for foreign files
        raise ValueError(f"cannot load '{path}' with torch.jit.load: {err}") from None
    probe = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        from torch._export.converter import TS2EPConverter

        exported = TS2EPConverter(scripted, (probe,)).convert()
        batch = torch.export.Dim("batch", min=1)
        module = torch.export.export(exported.module(), (probe,), dynamic_shapes=({0: batch},)).module()
        for name, original in scripted.named_parameters():
            owner_name, _, attribute = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            tensor = owner._buffers.pop(attribute)
            # frozen stays frozen, so that the client-model checks see the model the client trains
            owner.register_parameter(attribute, nn.Parameter(tensor.detach().clone(), original.requires_grad))
        with torch.no_grad():
            agrees = torch.allclose(module(probe), scripted(probe), rtol=1e-4, atol=1e-5)
    except Exception as err:  # the converter is experimental: any failure means this model cannot be audited so
        raise ValueError(
            f"could not convert the TorchScript model to a module the attacks can differentiate ({type(err).__name__}: "
            f"{err}). Give model.factory (module:callable) and model.weights (its state dict) instead."
        ) from None
    if not agrees:
        raise ValueError(
            "the converted TorchScript model disagrees with the original on a probe batch; give model.factory and "
            "model.weights instead."
        )
    if next(module.parameters(), None) is None:  # torch.jit.freeze folds the weights into constants
        raise ValueError(
            "the TorchScript model has no parameters (a torch.jit.freeze'd model keeps its weights as constants, "
            "and a client trains parameters): save the scripted model before freezing it."
        )
    return module
