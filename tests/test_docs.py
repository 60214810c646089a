"""The documentation site builds offline with warnings as errors, and holds its guide pages and API reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("myst_parser", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("furo", reason="the docs extra is not installed: pip install -e '.[docs]'")

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"sphinx failed:\n{done.stdout}\n{done.stderr}"
    guide = sorted(p.stem for p in DOCS.glob("*.md"))
    for page in [*guide, "api/index", "api/attacks", "api/priors", "api/defenses"]:
        assert (out / f"{page}.html").is_file(), f"{page}.html was not built"
    # autodoc imported the package and rendered its public attack with its parameters
    attacks = (out / "api" / "attacks.html").read_text(encoding="utf-8")
    assert 'id="art_gifd.attacks.GIFDAttack"' in attacks
    assert "l1_radius" in attacks
    # every guide page is reachable from the table of contents
    index = (out / "index.html").read_text(encoding="utf-8")
    for page in guide:
        if page != "index":
            assert f'href="{page}.html"' in index, f"{page} is not in the table of contents"
