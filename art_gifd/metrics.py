"""
Reconstruction quality: how close the images recovered by a gradient-inversion attack are to the client's data.

All functions take NCHW float arrays and a ``data_range`` ``(low, high)`` that maps the pixel values to ``[0, 1]``
before measuring; images with values outside the range (beyond float round-off) are refused, as they are on another
scale than ``data_range`` says (e.g. 8-bit images measured with the default ``(0, 1)``). A reconstructed batch comes
back in an arbitrary order,
so :func:`evaluate_batch` first pairs each original image with one reconstruction (:func:`match_images`, a Hungarian
assignment on the mean squared error) and only then computes the per-image metrics:

- PSNR in dB, capped at :data:`MAX_PSNR` so that an exact match stays a finite, JSON-friendly number;
- SSIM from scikit-image;
- LPIPS (Zhang et al. 2018) through :class:`LPIPSMetric`, which needs the torchvision backbone weights on disk and
  downloads them only when allowed (``allow_download=True`` or :data:`ALLOW_DOWNLOAD_ENV`): without them it reports
  itself unavailable rather than measure with a random network.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import lpips as lpips_lib
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity

from art_gifd.validation import check_device, real_array, to_numpy

logger = logging.getLogger(__name__)

#: PSNR (dB) reported for an exact match, and the cap of every PSNR value (an MSE of 1e-10 on ``[0, 1]`` images).
MAX_PSNR = 100.0

#: Smallest image side the LPIPS AlexNet backbone accepts; smaller images are upsampled to it.
LPIPS_MIN_SIZE = 32

#: LPIPS backbone name → (torchvision constructor, torchvision checkpoint file name, display name).
_BACKBONES: dict[str, tuple[str, str, str]] = {
    "alex": ("alexnet", "alexnet-owt-7be5be79.pth", "AlexNet"),
    "vgg": ("vgg16", "vgg16-397923af.pth", "VGG16"),
}


#: Tolerance on ``data_range``, as a fraction of its width: reconstructions are clamped to the range, but float
#: round-off (e.g. of a ``[-1, 1]`` rescaling) may leave them a few ulps outside it.
RANGE_TOLERANCE = 1e-4


def _check_range(data_range: Any) -> tuple[float, float]:
    """
    Validate a pixel range.

    :param data_range: ``(low, high)``.
    :return: ``(low, high)`` as floats.
    :raises ValueError: If ``data_range`` is not a pair of finite numbers with ``high > low``.
    """
    pair = isinstance(data_range, Sequence | np.ndarray) and not isinstance(data_range, str | bytes)
    values = list(data_range) if pair else []
    numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) for v in values)
    if len(values) != 2 or not numeric or not all(math.isfinite(v) for v in values) or not values[1] > values[0]:
        raise ValueError(
            f"data_range must be (low, high), two finite numbers with high > low (e.g. (0, 1), or (0, 255) for 8-bit "
            f"images), got {data_range!r}."
        )
    return float(values[0]), float(values[1])


def _validate_pair(
    reconstructed: np.ndarray, original: np.ndarray, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """
    Check that two image batches are comparable NCHW batches in ``[low, high]`` and convert them to float64.

    :param reconstructed: Reconstructed images, NCHW.
    :param original: Original images, NCHW.
    :param low: Lower end of the pixel range of both batches (from :func:`_check_range`).
    :param high: Upper end.
    :return: Both batches as float64 arrays.
    :raises ValueError: If a batch is not 4-D, looks like NHWC, is empty, the shapes differ, a value is NaN,
                        infinite or outside the range (by more than :data:`RANGE_TOLERANCE` of its width), or the
                        originals, not all black, fill under 1% of it (e.g. images in [0, 1] given the range
                        (0, 255)).
    """
    rec = real_array("reconstructed", reconstructed).astype(np.float64)
    orig = real_array("original", original).astype(np.float64)
    for name, arr in (("reconstructed", rec), ("original", orig)):
        if arr.ndim != 4:
            raise ValueError(f"{name} must be a 4-D NCHW array, got shape {arr.shape}.")
        # a last axis of 1, 3 or 4 (grey, RGB, RGBA) behind a second axis that is no channel count: channels last
        if arr.shape[1] not in (1, 3, 4) and arr.shape[3] in (1, 3, 4):
            raise ValueError(
                f"{name} has shape {arr.shape}, which looks like NHWC (channels last): transpose it to NCHW, e.g. "
                "images.transpose(0, 3, 1, 2)."
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values.")
    if rec.shape != orig.shape:
        raise ValueError(f"reconstructed and original must have the same shape, got {rec.shape} and {orig.shape}.")
    if rec.shape[0] == 0:
        raise ValueError("The batches are empty.")
    tolerance = RANGE_TOLERANCE * (high - low)
    for name, arr in (("reconstructed", rec), ("original", orig)):
        smallest, largest = float(arr.min()), float(arr.max())
        if smallest < low - tolerance or largest > high + tolerance:
            raise ValueError(
                f"{name} images span [{smallest:g}, {largest:g}], outside data_range ({low:g}, {high:g}): pass the "
                "images' pixel range as data_range (e.g. (0, 255) for 8-bit images)."
            )
    # the mirror mistake: float images in [0, 1] scored with an 8-bit range, where any two images look alike
    brightest = float(orig.max())
    if low < brightest <= low + (high - low) / 100:
        raise ValueError(
            f"original images span [{float(orig.min()):g}, {brightest:g}], under 1% of data_range ({low:g}, {high:g}): "
            "pass the images' own pixel range as data_range (e.g. (0, 1) for float images)."
        )
    # and images in [0, 1] scored with a range centred on 0, such as (-1, 1): PSNR reads 6 dB high
    if low < 0 < high and min(float(orig.min()), float(rec.min())) >= 0 and float(orig.max()) > 0:
        warnings.warn(
            f"Every image is at least 0 while data_range ({low:g}, {high:g}) reaches below 0: if the images lie in "
            "[0, 1], pass data_range=(0, 1); scored in a range twice as wide, PSNR reads about 6 dB high.",
            UserWarning,
            stacklevel=3,
        )
    return rec, orig


def _prepare(
    reconstructed: np.ndarray, original: np.ndarray, data_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """
    Validate two batches and rescale them linearly from ``data_range`` to ``[0, 1]``.

    :param reconstructed: Reconstructed images, NCHW.
    :param original: Original images, NCHW.
    :param data_range: ``(low, high)`` pixel range of both batches.
    :return: Both batches, float64 in ``[0, 1]``.
    :raises ValueError: If ``data_range`` or a batch is invalid (see :func:`_check_range` and :func:`_validate_pair`).
    """
    low, high = _check_range(data_range)
    rec, orig = _validate_pair(reconstructed, original, low, high)
    return (rec - low) / (high - low), (orig - low) / (high - low)


def psnr(reconstructed: np.ndarray, original: np.ndarray, data_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """
    Peak signal-to-noise ratio of each reconstructed image against its original, ``10 log10(1 / MSE)`` on ``[0, 1]``.

    :param reconstructed: Reconstructed images, NCHW.
    :param original: Original images, same shape.
    :param data_range: ``(low, high)`` pixel range of both batches.
    :return: PSNR in dB per image, shape ``(N,)``, capped at :data:`MAX_PSNR` (the value of an exact match).
    """
    rec, orig = _prepare(reconstructed, original, data_range)
    mse = np.mean((rec - orig) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(1.0 / mse)
    return np.minimum(values, MAX_PSNR)


def ssim(reconstructed: np.ndarray, original: np.ndarray, data_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """
    Structural similarity of each reconstructed image against its original (scikit-image, uniform window).

    The window is 7×7, or the largest odd size that fits images smaller than 7 pixels on a side.

    :param reconstructed: Reconstructed images, NCHW.
    :param original: Original images, same shape.
    :param data_range: ``(low, high)`` pixel range of both batches.
    :return: SSIM per image, shape ``(N,)``; 1 for an exact match.
    :raises ValueError: If the images are smaller than 3×3.
    """
    rec, orig = _prepare(reconstructed, original, data_range)
    smallest = min(rec.shape[2:])
    if smallest < 3:
        raise ValueError(f"SSIM needs images of at least 3×3 pixels, got {rec.shape[2]}×{rec.shape[3]}.")
    win_size = min(7, smallest if smallest % 2 else smallest - 1)
    return np.array(
        [
            structural_similarity(
                r.transpose(1, 2, 0), o.transpose(1, 2, 0), win_size=win_size, data_range=1.0, channel_axis=-1
            )
            for r, o in zip(rec, orig, strict=True)
        ],
        dtype=np.float64,
    )


def match_images(
    reconstructed: np.ndarray, original: np.ndarray, data_range: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """
    Pair reconstructions with originals one-to-one so that the total mean squared error is smallest (Hungarian).

    :param reconstructed: Reconstructed images, NCHW, in any order.
    :param original: Original images, same shape.
    :param data_range: ``(low, high)`` pixel range of both batches.
    :return: Permutation ``perm`` (int64, shape ``(N,)``) such that ``reconstructed[perm[i]]`` matches
        ``original[i]``.
    """
    rec, orig = _prepare(reconstructed, original, data_range)
    rec_flat = rec.reshape(len(rec), -1)
    orig_flat = orig.reshape(len(orig), -1)
    # ||o - r||² = ||o||² + ||r||² - 2 o·r, without materialising the N×N×D differences.
    sq_dist = (orig_flat**2).sum(axis=1)[:, None] + (rec_flat**2).sum(axis=1)[None, :] - 2.0 * orig_flat @ rec_flat.T
    cost = np.maximum(sq_dist, 0.0) / rec_flat.shape[1]
    _, perm = linear_sum_assignment(cost)
    return perm.astype(np.int64)


def _class_indices(name: str, labels: Any) -> np.ndarray:
    """
    Validate a 1-D array of class indices (integers, or floats with whole values) and return it as int64.

    :param name: What the labels are, for the message.
    :param labels: The labels: a list, numpy array or torch tensor.
    :return: The labels as an int64 array.
    :raises ValueError: If the labels are not 1-D, not whole numbers (e.g. class names as strings) or negative.
    """
    arr = to_numpy(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} labels must be a 1-D array, got shape {arr.shape}.")
    if arr.dtype.kind not in "iuf":
        raise ValueError(
            f"{name} labels must be integer class indices, got an array of dtype {arr.dtype}: convert class names or "
            "other values to indices first."
        )
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        bad = arr[~(np.isfinite(arr) & (arr == np.round(arr)))]
        raise ValueError(f"{name} labels must be whole class indices, got {bad[:3].tolist()}.")
    if np.any(arr < 0):  # -1 is often "no label": two of them would count as a correct match
        raise ValueError(f"{name} labels must be class indices of 0 or more, got {sorted(set(arr[arr < 0].tolist()))}.")
    return arr.astype(np.int64)


def _label_pair(predicted: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    """
    Validate recovered and true labels of one batch: 1-D class indices of the same, non-zero length.

    :param predicted: Recovered labels.
    :param true: True labels.
    :return: Both as int64 arrays.
    :raises ValueError: If a label array is not 1-D class indices, ``true`` is empty or the lengths differ.
    """
    pred = _class_indices("predicted", predicted)
    truth = _class_indices("true", true)
    if truth.size == 0:
        raise ValueError("true labels are empty.")
    if pred.size != truth.size:
        raise ValueError(
            f"Got {pred.size} predicted labels for {truth.size} true labels: pass one recovered label per image of "
            "the batch."
        )
    return pred, truth


def label_accuracy(predicted: np.ndarray, true: np.ndarray) -> float:
    """
    Fraction of the batch's labels recovered, as a multiset: order is ignored, repeats count.

    ``sum_c min(count_pred[c], count_true[c]) / len(true)``, e.g. ``[1, 1, 2]`` against ``[1, 2, 2]`` gives 2/3.

    :param predicted: Recovered labels, 1-D class indices, one per image.
    :param true: True labels of the batch, 1-D class indices, not empty.
    :return: The fraction, in ``[0, 1]``.
    :raises ValueError: If a label array is not 1-D or not whole numbers, ``true`` is empty, or the lengths differ.
    """
    pred, truth = _label_pair(predicted, true)
    recovered = Counter(pred.tolist()) & Counter(truth.tolist())
    return sum(recovered.values()) / truth.size


def default_weights_path(net: str = "alex") -> Path:
    """
    Where :class:`LPIPSMetric` looks for the backbone weights by default: torchvision's file in the torch hub cache.

    :param net: LPIPS backbone, ``"alex"`` or ``"vgg"``.
    :return: ``<torch hub dir>/checkpoints/<torchvision checkpoint file>``.
    :raises ValueError: If ``net`` is not supported.
    """
    if net not in _BACKBONES:
        raise ValueError(f"Unsupported LPIPS backbone {net!r}; choose one of {sorted(_BACKBONES)}.")
    return Path(torch.hub.get_dir()) / "checkpoints" / _BACKBONES[net][1]


_WARNED: set[str] = set()

#: Environment variable that allows :class:`LPIPSMetric` to download missing backbone weights (``1``, ``true`` or
#: ``yes``); ``art-gifd --allow-download`` sets it for the command and its workers.
ALLOW_DOWNLOAD_ENV = "ART_GIFD_ALLOW_DOWNLOAD"
#: Where torchvision publishes its ImageNet weights (the file name carries the first 8 hex digits of its SHA-256).
TORCHVISION_WEIGHTS_URL = "https://download.pytorch.org/models/"


def download_allowed(allow_download: bool | None = None) -> bool:
    """``allow_download`` if given, else whether :data:`ALLOW_DOWNLOAD_ENV` is set to a true value."""
    if allow_download is not None:
        return bool(allow_download)
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


def fetch_backbone_weights(net: str, destination: Path, url: str | None = None) -> None:
    """
    Download the backbone's torchvision weights to ``destination`` (atomically, with a progress bar).

    :param net: ``"alex"`` or ``"vgg"``.
    :param destination: The file to write (its folder is created).
    :param url: Where to fetch it (default: torchvision's release, whose SHA-256 prefix in the file name is checked;
                a URL given here, e.g. an internal mirror, is trusted as is).
    :raises RuntimeError: If the folder cannot be created, the download fails or the file does not match torchvision's
                          hash.
    """
    file_name = _BACKBONES[net][1]
    official = url is None
    source = TORCHVISION_WEIGHTS_URL + file_name if official else url
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file on the way, a read-only file system, a symlink loop
        raise RuntimeError(
            f"the folder '{destination.parent}' cannot be created ({exc.strerror or exc}): choose a writable "
            "weights path"
        ) from exc
    hash_prefix = file_name.rsplit("-", 1)[1].split(".")[0] if official else None
    logger.warning("LPIPS: downloading %s weights from %s to %s", _BACKBONES[net][2], source, destination)
    try:
        torch.hub.download_url_to_file(source, str(destination), hash_prefix=hash_prefix, progress=True)
    except Exception as exc:  # urllib, socket, hash and file-system errors all end here
        raise RuntimeError(f"could not download {source}: {exc}") from exc


def _warn_if_not_torchvisions(path: Path, file_name: str) -> None:
    """
    Warn when a local backbone file's SHA-256 does not start with the prefix in torchvision's file
    name: any weights of the right shapes load, and a randomly initialised backbone gives LPIPS values that mean
    nothing.
    """
    prefix = file_name.rsplit("-", 1)[1].split(".")[0]
    stat = path.stat()
    if not _sha256_of(str(path), stat.st_size, stat.st_mtime_ns).startswith(prefix):
        logger.warning(
            "LPIPS: %s is not torchvision's %s (its SHA-256 does not start with %s): its LPIPS values are only as "
            "good as those weights (random ones measure nothing); copy torchvision's file there for the standard "
            "metric.",
            path,
            file_name,
            prefix,
        )


@lru_cache(maxsize=8)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:  # size and time: a replaced file is hashed again
    from art_gifd.priors.checkpoints import sha256_of

    return sha256_of(path)


class LPIPSMetric:
    """
    Learned perceptual image patch similarity (LPIPS), with backbone weights read from disk (downloaded only when
    allowed).

    The ``lpips`` package ships its linear heads; the torchvision backbone (AlexNet or VGG16) is built with random
    weights and the real ImageNet weights are copied in from ``weights_path`` (default :func:`default_weights_path`).
    Without that file the metric is unavailable (:attr:`available` is ``False``, :attr:`reason` says why and how to fix
    it) and calling it raises: it never measures with its own random backbone. A file whose SHA-256 does not start with
    the prefix in torchvision's file name (``alexnet-owt-7be5be79.pth``) loads with a warning that names it: any
    weights of the right shapes would, and only the real ones give the standard metric.

    Grey images are repeated to three channels and images are scaled to ``[-1, 1]``. Images with a side smaller than
    :data:`LPIPS_MIN_SIZE` (32, the smallest input AlexNet's feature stack accepts) are upsampled bilinearly, keeping
    their aspect ratio, so that their smaller side is 32; this is logged once per instance at INFO level.

    :param net: LPIPS backbone, ``"alex"`` or ``"vgg"``.
    :param weights_path: torchvision state dict of the backbone (e.g. ``alexnet-owt-7be5be79.pth``); default: the
        torch hub cache.
    :param device: Torch device to run on.
    :param allow_download: Download the weights into ``weights_path`` when they are missing (torchvision's file, or
        ``download_url``); ``None``: only if :data:`ALLOW_DOWNLOAD_ENV` is set. Off by default: nothing is fetched
        unless the user opts in.
    :param download_url: Where to download from (default: torchvision's release, hash-checked).
    :raises ValueError: If ``net`` is not supported, or ``weights_path`` is a folder.
    """

    def __init__(
        self,
        net: str = "alex",
        weights_path: str | Path | None = None,
        device: str = "cpu",
        allow_download: bool | None = None,
        download_url: str | None = None,
    ) -> None:
        if net not in _BACKBONES:
            raise ValueError(f"Unsupported LPIPS backbone {net!r}; choose one of {sorted(_BACKBONES)}.")
        if weights_path is not None and not isinstance(weights_path, str | os.PathLike):
            raise ValueError(f"weights_path must be a file path, got {type(weights_path).__name__}.")
        self.net = net
        self.weights_path = Path(weights_path).expanduser() if weights_path is not None else default_weights_path(net)
        if self.weights_path.is_dir():
            raise ValueError(
                f"weights_path '{self.weights_path}' is a folder: give the weights file itself, e.g. "
                f"'{self.weights_path / _BACKBONES[net][1]}'."
            )
        self.device = check_device(device)
        self.reason: str | None = None
        self._model: lpips_lib.LPIPS | None = None
        self._logged_upsampling = False
        _, file_name, display = _BACKBONES[net]
        if not self.weights_path.is_file() and download_allowed(allow_download):
            try:
                fetch_backbone_weights(net, self.weights_path, download_url)
            except RuntimeError as exc:
                self.reason = f"{display} weights not found at {self.weights_path} and {exc}"
        if self.reason is None and not self.weights_path.is_file():
            self.reason = (
                f"{display} weights not found at {self.weights_path}; copy {file_name} there, pass weights_path, or "
                f"allow a download (art-gifd --allow-download, or {ALLOW_DOWNLOAD_ENV}=1)."
            )
        elif self.reason is None:
            _warn_if_not_torchvisions(self.weights_path, file_name)
            try:
                self._model = self._build()
            except Exception as exc:  # torch.load raises many exception types on a corrupt or foreign file.
                first = " ".join(str(exc).split()).split(". ")[0][:200]  # torch goes on for paragraphs
                self.reason = (
                    f"{display} weights at {self.weights_path} could not be loaded ({type(exc).__name__}: {first}): "
                    f"the file is damaged or not torchvision's {file_name}; delete it and copy it again."
                )
        if self.reason is not None and self.reason not in _WARNED:
            _WARNED.add(self.reason)  # once per process and reason, not once per metric object
            logger.warning("LPIPS unavailable: %s", self.reason)

    @property
    def available(self) -> bool:
        """``True`` when the real backbone weights were loaded and the metric can be computed."""
        return self._model is not None

    @property
    def model(self) -> lpips_lib.LPIPS | None:
        """The underlying ``lpips.LPIPS`` module with the loaded backbone, or ``None`` when unavailable."""
        return self._model

    def _build(self) -> lpips_lib.LPIPS:
        """
        Build the LPIPS network and copy the torchvision backbone weights into its feature slices.

        :return: The LPIPS module, in eval mode on :attr:`device`.
        """
        constructor = getattr(torchvision.models, _BACKBONES[self.net][0])
        backbone = constructor()
        state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        backbone.load_state_dict(state, strict=True)
        with warnings.catch_warnings():
            # lpips builds its random backbone with torchvision's deprecated ``pretrained=False`` argument.
            warnings.simplefilter("ignore", UserWarning)
            model = lpips_lib.LPIPS(net=self.net, pretrained=True, pnet_rand=True, verbose=False)
        # lpips names each layer of its slices by its index in torchvision's ``features`` stack.
        for k in range(1, model.net.N_slices + 1):
            for index, layer in getattr(model.net, f"slice{k}").named_children():
                layer.load_state_dict(backbone.features[int(index)].state_dict(), strict=True)
        model.eval().requires_grad_(False)
        return model.to(self.device)

    def _to_input(self, images: np.ndarray) -> torch.Tensor:
        """
        Convert ``[0, 1]`` NCHW images to the LPIPS input: three channels, ``[-1, 1]``, at least 32×32.

        :param images: Images in ``[0, 1]``, one or three channels.
        :return: Float32 tensor on :attr:`device`.
        :raises ValueError: If the images have neither one nor three channels.
        """
        if images.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS needs 1 or 3 channels, got {images.shape[1]}.")
        x = torch.from_numpy(images * 2.0 - 1.0).float().to(self.device)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        height, width = x.shape[2:]
        if min(height, width) < LPIPS_MIN_SIZE:
            scale = LPIPS_MIN_SIZE / min(height, width)
            size = (math.ceil(height * scale), math.ceil(width * scale))
            if not self._logged_upsampling:
                logger.info("LPIPS: upsampling %dx%d images to %dx%d for the backbone.", height, width, *size)
                self._logged_upsampling = True
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    def __call__(
        self, reconstructed: np.ndarray, original: np.ndarray, data_range: tuple[float, float] = (0.0, 1.0)
    ) -> np.ndarray:
        """
        LPIPS distance of each reconstructed image to its original (lower is closer, 0 for an exact match).

        :param reconstructed: Reconstructed images, NCHW, one or three channels.
        :param original: Original images, same shape.
        :param data_range: ``(low, high)`` pixel range of both batches.
        :return: Distance per image, shape ``(N,)``.
        :raises RuntimeError: If the metric is unavailable (the message is :attr:`reason`).
        """
        if self._model is None:
            raise RuntimeError(f"LPIPS is unavailable: {self.reason}")
        rec, orig = _prepare(reconstructed, original, data_range)
        with torch.no_grad():
            distances = self._model(self._to_input(rec), self._to_input(orig))
        return distances.reshape(-1).cpu().numpy().astype(np.float64)


def shared_labels(labels: np.ndarray) -> np.ndarray:
    """
    For each image of a client batch, whether another image of the batch has its label.

    The shared update carries the images of one label through the same row of the classifier head, so such images
    are told apart only by the layers below it: gradient-matching attacks recover them markedly worse (measured in
    ``benchmarks/results/shared_labels.md``), and reports show them apart.

    :param labels: True labels of the batch, 1-D.
    :return: Boolean array, same length.
    """
    _, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)] > 1


def split_by_shared_label(per_image: dict[str, Any], metric: str = "psnr") -> tuple[np.ndarray, np.ndarray] | None:
    """
    A record's per-image ``metric`` split into the images that share their label in their client batch and the
    others, by the ``shared_label`` flags that :func:`evaluate_batch` writes.

    :param per_image: A record's ``per_image`` dict.
    :param metric: The per-image list to split.
    :return: ``(shared, own)`` arrays, or ``None`` for a record without the flags (written before they were kept).
    """
    flags = per_image.get("shared_label")
    if not flags:
        return None
    mask = np.asarray(flags, dtype=bool)
    values = np.asarray(per_image[metric], dtype=np.float64)
    return values[mask], values[~mask]


def evaluate_batch(
    reconstructed: np.ndarray,
    original: np.ndarray,
    rec_labels: np.ndarray,
    true_labels: np.ndarray,
    data_range: tuple[float, float] = (0.0, 1.0),
    lpips: LPIPSMetric | None = None,
) -> dict[str, Any]:
    """
    Score a reconstructed batch: match it to the originals (:func:`match_images`), then measure each pair.

    :param reconstructed: Reconstructed images, NCHW, in any order.
    :param original: Original images, same shape.
    :param rec_labels: Labels the attack recovered, 1-D.
    :param true_labels: True labels of the batch, 1-D.
    :param data_range: ``(low, high)`` pixel range of both batches.
    :param lpips: LPIPS metric to include, or ``None``; an unavailable one yields ``None`` LPIPS values.
    :return: JSON-serialisable dict: ``psnr``, ``ssim`` and ``lpips`` (means over the batch; ``lpips`` may be
        ``None``), ``label_accuracy``, ``per_image`` (lists ``psnr``, ``ssim``, ``lpips`` and ``shared_label``
        (:func:`shared_labels` of ``true_labels``) in the order of ``original``) and ``assignment`` (the matching
        permutation as a list).
    :raises ValueError: If the images, ``data_range`` or the labels are invalid, or the labels are not one per image.
    """
    perm = match_images(reconstructed, original, data_range)  # validates the images first
    pred, truth = _label_pair(rec_labels, true_labels)
    if truth.size != len(perm):
        raise ValueError(f"Got {truth.size} true labels for {len(perm)} original images: pass one label per image.")
    matched = to_numpy(reconstructed)[perm]
    psnr_values = psnr(matched, original, data_range)
    ssim_values = ssim(matched, original, data_range)
    lpips_values: list[float] | None = None
    if lpips is not None:
        if lpips.available:
            lpips_values = [float(v) for v in lpips(matched, original, data_range)]
        else:
            logger.debug("Skipping LPIPS: %s", lpips.reason)
    return {
        "psnr": float(np.mean(psnr_values)),
        "ssim": float(np.mean(ssim_values)),
        "lpips": float(np.mean(lpips_values)) if lpips_values is not None else None,
        "label_accuracy": label_accuracy(pred, truth),
        "per_image": {
            "psnr": [float(v) for v in psnr_values],
            "ssim": [float(v) for v in ssim_values],
            "lpips": lpips_values,
            "shared_label": [bool(v) for v in shared_labels(truth)],
        },
        "assignment": [int(i) for i in perm],
    }
