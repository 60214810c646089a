"""The audit report in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
Selenium) loads ``report.html`` without console errors or network fetches, decodes every image, shows one results row
per setting of ``report.json``, and prints to PDF. A full-page screenshot is kept in ``test-artifacts/``."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from art_gifd.audit import run_audit

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
INSTALL = (
    "install Debian's chromium and chromium-driver (sudo apt-get install chromium chromium-driver, or make sysdeps)"
)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install -e '.[browser]'")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=f"no Chromium/ChromeDriver found: {INSTALL}")

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

CONFIG = """\
title = "browser check"
output = "out"
images_per_setting = 2
budget = { steps_per_stage = 3, stages = 2, num_restarts = 1 }
priors = { mnist = { type = "embedded" } }
[model]
factory = "art_gifd.models:lenet"
input_shape = [1, 32, 32]
num_classes = 10
[data]
embedded = "mnist32"
[federated]
batch_sizes = [1, 2]
[[defenses]]
type = "gaussian"
params = { sigma = 0.01 }
[[attacks]]
name = "gifd"
prior = "mnist"
[utility]
rounds = 2
batch_size = 4
probe_batches = 1
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-audit")
    (folder / "audit.toml").write_text(CONFIG)
    return run_audit(folder / "audit.toml", verbose=False)


@pytest.fixture(scope="module")
def browser(report, tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        driver.get(report.html.resolve().as_uri())
        yield driver
    finally:
        driver.quit()


def test_no_console_errors_and_no_fetches(browser) -> None:
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [name for name in fetched if not name.startswith("data:")] == []


def test_every_image_decodes(browser) -> None:
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert len(images) == 2  # reconstruction grid and privacy-utility figure
    assert all(complete and width > 0 and height > 0 for complete, width, height in images)


def test_results_table_has_the_json_rows(browser, report) -> None:
    document = json.loads(report.json.read_text())
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#results tbody tr')).map(r => "
        "[r.dataset.setting, Array.from(r.cells).map(c => c.innerText.trim())])"
    )
    assert [row_id for row_id, _ in rows] == [s["id"] for s in document["settings"]]
    assert len(rows) == 4  # 2 batch sizes x (baseline + Gaussian noise) x GIFD
    for (_, cells), setting in zip(rows, document["settings"], strict=True):
        assert cells[0] == str(setting["batch_size"]) and cells[1] == setting["defense_label"]
        assert cells[-1] == setting["risk"]


def test_prints_to_pdf_and_keeps_a_screenshot(browser, tmp_path) -> None:
    from selenium.webdriver.common.print_page_options import PrintOptions

    pdf = base64.b64decode(browser.print_page(PrintOptions()))
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
    (tmp_path / "report.pdf").write_bytes(pdf)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(height + 120, 16_000))
    shot = tmp_path / "audit-report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "audit-report.png")
    shutil.copy(tmp_path / "report.pdf", ARTIFACTS / "audit-report.pdf")
