"""Tests of the reconstruction-quality metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from art_gifd.metrics import (
    MAX_PSNR,
    LPIPSMetric,
    evaluate_batch,
    label_accuracy,
    match_images,
    psnr,
    shared_labels,
    split_by_shared_label,
    ssim,
)


@pytest.fixture()
def rng() -> np.random.Generator:
    """Seeded random generator."""
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def alexnet_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision AlexNet state dict from a seeded random init, saved once for the module."""
    torch.manual_seed(0)
    state = torchvision.models.alexnet().state_dict()
    path = tmp_path_factory.mktemp("weights") / "alexnet.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def lpips_metric(alexnet_weights: tuple[Path, dict[str, torch.Tensor]]) -> LPIPSMetric:
    """LPIPS metric built from the saved weights."""
    return LPIPSMetric(weights_path=alexnet_weights[0])


def test_psnr_of_known_mse(rng: np.random.Generator) -> None:
    original = rng.uniform(0.2, 0.8, size=(3, 1, 8, 8))
    offsets = np.array([0.01, 0.05, 0.1])
    reconstructed = original + offsets[:, None, None, None]
    np.testing.assert_allclose(psnr(reconstructed, original), 10 * np.log10(1 / offsets**2))
    # The same images stored in [-1, 1] have the same PSNR once rescaled.
    np.testing.assert_allclose(
        psnr(reconstructed * 2 - 1, original * 2 - 1, data_range=(-1.0, 1.0)), 10 * np.log10(1 / offsets**2)
    )


def test_identical_images_give_max_psnr_and_unit_ssim(rng: np.random.Generator) -> None:
    images = rng.uniform(size=(2, 3, 8, 8))
    np.testing.assert_array_equal(psnr(images, images), [MAX_PSNR, MAX_PSNR])
    np.testing.assert_allclose(ssim(images, images), [1.0, 1.0])


def test_ssim_decreases_with_noise(rng: np.random.Generator) -> None:
    original = np.repeat(rng.uniform(size=(1, 3, 16, 16)), 3, axis=0)
    noise = rng.normal(size=original.shape[1:])
    reconstructed = np.clip(original + np.array([0.05, 0.2, 0.5])[:, None, None, None] * noise, 0, 1)
    values = ssim(reconstructed, original)
    assert np.all(np.diff(values) < 0)
    assert values[0] < 1.0


def test_match_images_recovers_permutation(rng: np.random.Generator) -> None:
    original = rng.uniform(size=(6, 3, 8, 8))
    shuffle = rng.permutation(6)
    reconstructed = np.clip(original[shuffle] + rng.normal(scale=0.05, size=original.shape), 0, 1)
    perm = match_images(reconstructed, original)
    # reconstructed[j] is a noisy original[shuffle[j]], so original[i] must be matched to j = argsort(shuffle)[i].
    np.testing.assert_array_equal(perm, np.argsort(shuffle))
    np.testing.assert_array_equal(shuffle[perm], np.arange(6))


def test_shared_labels_flag_the_images_whose_label_repeats_in_the_batch(rng: np.random.Generator) -> None:
    assert shared_labels(np.array([3, 8, 3, 0])).tolist() == [True, False, True, False]
    assert shared_labels(np.array([5])).tolist() == [False]
    images = rng.random((4, 1, 8, 8))
    scores = evaluate_batch(images, images[::-1].copy(), np.array([1, 2, 2, 7]), np.array([7, 2, 2, 1]))
    assert scores["per_image"]["shared_label"] == [False, True, True, False]  # in the originals' order
    shared, own = split_by_shared_label(scores["per_image"])
    per_image_psnr = np.asarray(scores["per_image"]["psnr"])
    assert shared.tolist() == per_image_psnr[1:3].tolist() and own.tolist() == per_image_psnr[[0, 3]].tolist()
    assert split_by_shared_label({"psnr": [20.0]}) is None  # a record from before the flags were kept


def test_label_accuracy_counts_multisets() -> None:
    assert label_accuracy(np.array([1, 1, 2]), np.array([1, 2, 2])) == pytest.approx(2 / 3)
    assert label_accuracy(np.array([3, 2, 1]), np.array([1, 2, 3])) == 1.0
    assert label_accuracy(np.array([4, 4]), np.array([1, 2])) == 0.0


def test_lpips_without_weights_is_unavailable(tmp_path: Path, rng: np.random.Generator) -> None:
    missing = tmp_path / "nowhere" / "alexnet.pth"
    metric = LPIPSMetric(weights_path=missing)
    assert not metric.available
    assert metric.reason is not None and str(missing) in metric.reason
    images = rng.uniform(size=(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="weights not found"):
        metric(images, images)


@pytest.mark.parametrize("content", ["junk", "wrong keys"])
def test_lpips_with_unloadable_weights_is_unavailable(tmp_path: Path, content: str) -> None:
    path = tmp_path / "alexnet.pth"
    if content == "junk":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save({"features.0.weight": torch.zeros(1)}, path)
    metric = LPIPSMetric(weights_path=path)
    assert not metric.available
    assert metric.reason is not None and "could not be loaded" in metric.reason and str(path) in metric.reason
    assert metric.reason.endswith(
        "the file is damaged or not torchvision's alexnet-owt-7be5be79.pth; delete it and copy it again."
    )
    assert "file an issue" not in metric.reason and "\n" not in metric.reason  # torch's paragraphs left out


def test_lpips_default_path_is_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    metric = LPIPSMetric()
    assert not metric.available
    assert str(tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth") in metric.reason


def test_lpips_copies_backbone_weights(
    lpips_metric: LPIPSMetric, alexnet_weights: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    _, state = alexnet_weights
    assert lpips_metric.available and lpips_metric.reason is None
    convs = 0
    for k in range(1, 6):
        for index, layer in getattr(lpips_metric.model.net, f"slice{k}").named_children():
            if isinstance(layer, torch.nn.Conv2d):
                torch.testing.assert_close(layer.weight, state[f"features.{index}.weight"], rtol=0, atol=0)
                torch.testing.assert_close(layer.bias, state[f"features.{index}.bias"], rtol=0, atol=0)
                convs += 1
    assert convs == 5


def test_lpips_distances(lpips_metric: LPIPSMetric, rng: np.random.Generator) -> None:
    images = rng.uniform(size=(2, 3, 32, 32))
    np.testing.assert_array_equal(lpips_metric(images, images), [0.0, 0.0])
    assert np.all(lpips_metric(images, rng.uniform(size=images.shape)) > 0)


def test_lpips_on_small_grey_images(
    alexnet_weights: tuple[Path, dict[str, torch.Tensor]], rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    lpips_metric = LPIPSMetric(weights_path=alexnet_weights[0])
    images = rng.uniform(size=(2, 1, 28, 28))
    other = rng.uniform(size=images.shape)
    with caplog.at_level(logging.INFO, logger="art_gifd.metrics"):
        same = lpips_metric(images, images)
        different = lpips_metric(images, other)
    np.testing.assert_array_equal(same, [0.0, 0.0])
    assert different.shape == (2,) and np.all(different > 0)
    # The upsampling to AlexNet's 32×32 minimum is logged once per instance, not per call.
    assert sum("upsampling 28x28 images to 32x32" in r.getMessage() for r in caplog.records) == 1


def test_evaluate_batch_is_json_serialisable(lpips_metric: LPIPSMetric, rng: np.random.Generator) -> None:
    original = rng.uniform(size=(4, 1, 32, 32))
    shuffle = rng.permutation(4)
    reconstructed = np.clip(original[shuffle] + rng.normal(scale=0.1, size=original.shape), 0, 1)
    result = evaluate_batch(reconstructed, original, np.array([0, 1, 1, 2]), np.array([1, 0, 2, 2]), lpips=lpips_metric)
    assert json.loads(json.dumps(result)) == result
    assert result["assignment"] == np.argsort(shuffle).tolist()
    assert result["psnr"] == pytest.approx(np.mean(result["per_image"]["psnr"]))
    assert result["lpips"] == pytest.approx(np.mean(result["per_image"]["lpips"]))
    assert result["label_accuracy"] == pytest.approx(3 / 4)
    assert len(result["per_image"]["ssim"]) == 4


def test_evaluate_batch_with_unavailable_lpips(tmp_path: Path, rng: np.random.Generator) -> None:
    images = rng.uniform(size=(2, 3, 8, 8))
    result = evaluate_batch(images, images, [0, 1], [0, 1], lpips=LPIPSMetric(weights_path=tmp_path / "missing.pth"))
    assert result["lpips"] is None and result["per_image"]["lpips"] is None
    assert result["psnr"] == MAX_PSNR and result["ssim"] == pytest.approx(1.0)


def test_tensors_that_require_grad_are_measured_as_arrays(rng: np.random.Generator) -> None:
    images = rng.uniform(size=(2, 1, 8, 8)).astype(np.float32)
    noisy = np.clip(images + rng.normal(0, 0.05, images.shape), 0, 1).astype(np.float32)
    attached = torch.tensor(noisy, requires_grad=True)
    assert psnr(attached, images).tolist() == psnr(noisy, images).tolist()
    assert evaluate_batch(attached, torch.tensor(images), [0, 1], [0, 1])["psnr"] == pytest.approx(
        evaluate_batch(noisy, images, [0, 1], [0, 1])["psnr"]
    )


@pytest.mark.parametrize(
    ("reconstructed", "original", "message"),
    [
        (np.zeros((2, 1, 8, 8)), np.zeros((2, 1, 8, 9)), "same shape"),
        (np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), "4-D"),
        (np.full((1, 1, 8, 8), np.nan), np.zeros((1, 1, 8, 8)), "NaN"),
    ],
)
def test_bad_inputs_raise(reconstructed: np.ndarray, original: np.ndarray, message: str) -> None:
    for metric in (psnr, ssim, match_images):
        with pytest.raises(ValueError, match=message):
            metric(reconstructed, original)


def test_bad_data_range_and_labels_raise() -> None:
    images = np.zeros((1, 1, 8, 8))
    with pytest.raises(ValueError, match="high > low"):
        psnr(images, images, data_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="empty"):
        label_accuracy(np.array([1]), np.array([], dtype=int))
    with pytest.raises(ValueError, match="Unsupported LPIPS backbone"):
        LPIPSMetric(net="squeeze")


def test_images_outside_data_range_are_refused(lpips_metric: LPIPSMetric, rng: np.random.Generator) -> None:
    original = rng.uniform(size=(2, 3, 32, 32))
    reconstructed = np.clip(original + rng.normal(scale=0.1, size=original.shape), 0, 1)
    labels = np.array([0, 1])
    measures = (psnr, ssim, match_images, lpips_metric, lambda r, o: evaluate_batch(r, o, labels, labels))
    for measure in measures:  # 8-bit images measured with the default (0, 1)
        with pytest.raises(ValueError, match=r"reconstructed images span \[0, 255\], outside data_range \(0, 1\)"):
            measure(reconstructed * 255, original * 255)
    with pytest.raises(ValueError, match=r"original images span .* outside data_range \(-1, 1\).*pass the images'"):
        psnr(reconstructed * 2 - 1, original * 4 - 2, data_range=(-1, 1))
    np.testing.assert_allclose(psnr(reconstructed * 255, original * 255, (0, 255)), psnr(reconstructed, original))
    for measure in (psnr, ssim, match_images):  # the mirror mistake: images in [0, 1] given an 8-bit range
        with pytest.raises(ValueError, match=r"original images span \[.*\], under 1% of data_range \(0, 255\)"):
            measure(reconstructed, original, data_range=(0, 255))
    black = np.zeros_like(original)
    assert psnr(black, black, data_range=(0, 255)).tolist() == [100.0, 100.0]  # all-black originals are no mistake
    # float round-off just beyond the range is no other scale
    assert np.all(np.isfinite(psnr(reconstructed * (1 + 1e-6), original * (1 + 1e-6))))


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 8, 8, 1), (2, 32, 32, 1), (2, 32, 32, 4)])
def test_channels_last_images_are_refused(shape: tuple[int, ...], rng: np.random.Generator) -> None:
    images = rng.uniform(size=shape)
    labels = np.array([0, 1])
    for measure in (psnr, ssim, match_images, lambda r, o: evaluate_batch(r, o, labels, labels)):
        with pytest.raises(ValueError, match=r"looks like NHWC \(channels last\): transpose it to NCHW"):
            measure(images, images)


@pytest.mark.parametrize(
    "shape", [(2, 1, 32, 32), (2, 3, 64, 64), (2, 3, 8, 3), (2, 1, 5, 1), (2, 4, 16, 16), (2, 4, 8, 4)]
)
def test_channels_first_images_are_measured(shape: tuple[int, ...], rng: np.random.Generator) -> None:
    images = rng.uniform(size=shape)
    np.testing.assert_array_equal(psnr(images, images), [MAX_PSNR, MAX_PSNR])


@pytest.mark.parametrize(
    "data_range", [(0, 1, 2), (1,), "01", None, (0, float("nan")), (0, float("inf")), (False, True), ("0", "1"), (1, 1)]
)
def test_data_range_must_be_a_pair_of_finite_numbers(data_range: object) -> None:
    images = np.zeros((1, 1, 8, 8))
    for measure in (psnr, ssim, match_images):
        with pytest.raises(ValueError, match=r"data_range must be \(low, high\), two finite numbers with high > low"):
            measure(images, images, data_range)


def test_data_range_takes_numpy_pairs(rng: np.random.Generator) -> None:
    images = rng.uniform(size=(2, 1, 8, 8))
    for data_range in (np.array([0.0, 1.0]), [np.int64(0), np.float32(1.0)]):
        np.testing.assert_array_equal(psnr(images, images, data_range), [MAX_PSNR, MAX_PSNR])


def test_label_accuracy_needs_one_predicted_label_per_true_label() -> None:
    with pytest.raises(ValueError, match="Got 4 predicted labels for 1 true labels"):
        label_accuracy(np.array([1, 2, 3, 4]), np.array([1]))
    with pytest.raises(ValueError, match="Got 0 predicted labels for 2 true labels"):
        label_accuracy([], [1, 2])


@pytest.mark.parametrize(
    ("predicted", "message"),
    [
        (np.array(["1"]), "predicted labels must be integer class indices, got an array of dtype <U1"),
        ([None], "predicted labels must be integer class indices, got an array of dtype object"),
        ([True], "predicted labels must be integer class indices, got an array of dtype bool"),
        ([1.5], r"predicted labels must be whole class indices, got \[1.5\]"),
        ([float("nan")], "predicted labels must be whole class indices"),
        ([-1], r"predicted labels must be class indices of 0 or more, got \[-1\]"),
    ],
)
def test_label_accuracy_refuses_labels_that_are_no_class_indices(predicted: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        label_accuracy(predicted, [1])
    with pytest.raises(ValueError, match=message.replace("predicted", "true")):
        label_accuracy([1], predicted)


def test_label_accuracy_takes_integer_arrays_tensors_lists_and_whole_floats() -> None:
    assert label_accuracy(torch.tensor([2, 1]), np.array([1, 2], dtype=np.uint8)) == 1.0
    assert label_accuracy([1, 2], [2.0, 3.0]) == 0.5
    assert label_accuracy(np.array([7], dtype=np.int32), [7]) == 1.0


def test_evaluate_batch_needs_one_label_per_image(rng: np.random.Generator) -> None:
    images = rng.uniform(size=(2, 1, 8, 8))
    with pytest.raises(ValueError, match="Got 3 predicted labels for 2 true labels"):
        evaluate_batch(images, images, [1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="Got 1 true labels for 2 original images"):
        evaluate_batch(images, images, [1], [1])
    with pytest.raises(ValueError, match="true labels must be integer class indices"):
        evaluate_batch(images, images, [1, 2], ["a", "b"])


@pytest.fixture()
def file_server(alexnet_weights: tuple[Path, dict[str, torch.Tensor]]):
    """A local HTTP server over the folder of the saved weights (no internet involved)."""
    import functools
    import http.server
    import threading

    folder = alexnet_weights[0].parent
    (folder / "alexnet-owt-7be5be79.pth").write_bytes(alexnet_weights[0].read_bytes())  # torchvision's name
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_lpips_downloads_the_backbone_only_when_the_user_opts_in(
    tmp_path: Path,
    file_server: str,
    alexnet_weights: tuple[Path, dict[str, torch.Tensor]],
    lpips_metric: LPIPSMetric,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from art_gifd.metrics import ALLOW_DOWNLOAD_ENV

    monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "0")
    cache = tmp_path / "hub" / "checkpoints" / "alexnet.pth"
    offline = LPIPSMetric(weights_path=cache, download_url=file_server + "alexnet.pth")
    assert not offline.available and not cache.exists() and "--allow-download" in offline.reason
    monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "1")
    fetched = LPIPSMetric(weights_path=cache, download_url=file_server + "alexnet.pth")
    assert fetched.available and cache.read_bytes() == alexnet_weights[0].read_bytes()
    images = np.random.default_rng(0).uniform(size=(2, 3, 32, 32))
    np.testing.assert_allclose(fetched(images, images[::-1]), lpips_metric(images, images[::-1]), rtol=1e-6)
    broken = LPIPSMetric(weights_path=tmp_path / "other.pth", download_url=file_server + "missing.pth")
    assert not broken.available and "could not download" in broken.reason
    # a destination under a file is a reason, not a traceback; "~" is the user's home; the backbone is checked first
    (tmp_path / "afile").write_text("")
    blocked = LPIPSMetric(weights_path=tmp_path / "afile" / "x.pth", download_url=file_server + "alexnet.pth")
    assert not blocked.available and f"the folder '{tmp_path / 'afile'}' cannot be created" in blocked.reason
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = LPIPSMetric(weights_path="~/w/alexnet.pth", download_url=file_server + "alexnet.pth")
    assert home.available and home.weights_path == tmp_path / "home" / "w" / "alexnet.pth"
    with pytest.raises(ValueError, match="Unsupported LPIPS backbone 'squeeze'"):
        LPIPSMetric(net="squeeze", weights_path=cache)


def test_lpips_checks_torchvision_hash_of_a_download(
    tmp_path: Path, file_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from art_gifd import metrics

    monkeypatch.setattr(metrics, "TORCHVISION_WEIGHTS_URL", file_server)  # serves a file under torchvision's name
    metric = LPIPSMetric(weights_path=tmp_path / "alexnet.pth", allow_download=True)
    assert not metric.available and "could not download" in metric.reason and "hash" in metric.reason.lower()
    assert not (tmp_path / "alexnet.pth").exists()


def test_cli_allow_download_flag_sets_the_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from art_gifd.cli import main
    from art_gifd.metrics import ALLOW_DOWNLOAD_ENV, download_allowed

    monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "0")  # recorded, so that the variable main() sets is undone afterwards
    assert not download_allowed()
    (tmp_path / "r.jsonl").write_text("")
    main(["--allow-download", "bench-report", str(tmp_path / "r.jsonl")])
    assert os.environ[ALLOW_DOWNLOAD_ENV] == "1" and download_allowed()


def test_lpips_names_a_backbone_that_is_not_torchvisions_and_refuses_bad_arguments(
    alexnet_weights: tuple[Path, dict[str, torch.Tensor]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        metric = LPIPSMetric(weights_path=alexnet_weights[0])  # random weights of the right shapes
    assert metric.available  # they load: the warning is what tells the numbers apart
    assert "is not torchvision's alexnet-owt-7be5be79.pth (its SHA-256 does not start with 7be5be79)" in caplog.text
    with pytest.raises(ValueError, match="weights_path must be a file path, got int"):
        LPIPSMetric(weights_path=5)
    folder = alexnet_weights[0].parent
    with pytest.raises(ValueError, match=rf"'{folder}' is a folder: give the weights file itself, e.g\. '.*alexnet"):
        LPIPSMetric(weights_path=folder)
    with pytest.raises(ValueError, match="is not a device name"):
        LPIPSMetric(weights_path=alexnet_weights[0], device="gpu")


def test_prior_loaders_name_bad_specs_and_devices() -> None:
    from art_gifd.priors.embedded import load_default_prior
    from art_gifd.priors.registry import load_prior

    with pytest.raises(ValueError, match="is not a device name"):
        load_default_prior(device="gpu")
    with pytest.raises(ValueError, match="is not a device name"):
        load_prior({"type": "embedded"}, "gpu")
    with pytest.raises(
        ValueError, match=r"A 'dcgan' prior spec takes weights, nz, ngf, nc, image_size .*; missing: nz"
    ):
        load_prior({"type": "dcgan", "weights": "g.pt", "ngf": 64, "nc": 1, "image_size": 32}, "cpu")
    with pytest.raises(ValueError, match="unknown: nmae"):
        load_prior({"type": "embedded", "nmae": "mnist32"}, "cpu")
    with pytest.raises(ValueError, match="Unknown prior type 'gan'"):
        load_prior({"type": "gan"}, "cpu")


def test_images_in_0_1_scored_with_a_range_centred_on_0_warn(rng: np.random.Generator) -> None:
    import warnings

    a, b = rng.random((2, 1, 8, 8)), rng.random((2, 1, 8, 8))
    with pytest.warns(UserWarning, match=r"Every image is at least 0 while data_range \(-1, 1\) .* pass data_range"):
        psnr(a, b, data_range=(-1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # images that use the range's negative half: nothing to say
        psnr(a * 2 - 1, b * 2 - 1, data_range=(-1, 1))
