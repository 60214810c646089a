"""Self-contained HTML reports rendered with jinja2 (images embedded as data URIs, no external files)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape


def markdown_text(value: Any) -> Any:
    """
    A string made safe for one line or table cell of Markdown (other values unchanged): line breaks become spaces,
    ``|`` is escaped, ``<`` / ``>`` become entities and the ``](`` of a link or image is broken, so that a label or
    title cannot split a table row, add a column, start a heading, carry raw HTML or load a remote image.
    """
    if not isinstance(value, str):
        return value
    text = " ".join(value.split()).replace("|", "\\|").replace("](", "]\\(")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def template_environment(markdown: bool = False) -> Environment:
    """
    The jinja2 environment of the report templates (``art_gifd/report/templates``): HTML autoescaped; with
    ``markdown``, for the Markdown templates, every value written passes through :func:`markdown_text`.
    """
    return Environment(
        loader=PackageLoader("art_gifd", "report/templates"),
        autoescape=select_autoescape(["html"]),
        finalize=markdown_text if markdown else None,
    )


def png_data_uri(path: str | Path) -> str:
    """The PNG file at ``path`` as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_results_html(results: dict[str, Any], figure: str | Path | None = None) -> str:
    """
    Render a results document (``art-gifd/results/v1``) as a self-contained HTML page.

    :param results: The results document.
    :param figure: Optional PNG (e.g. the reconstruction grid) embedded in the page.
    """
    from art_gifd.experiment import protocol_label

    template = template_environment().get_template("results.html")
    return template.render(
        results=results, figure=png_data_uri(figure) if figure else None, protocol_label=protocol_label
    )


def write_results_html(results: dict[str, Any], path: str | Path, figure: str | Path | None = None) -> Path:
    """Write :func:`render_results_html` to ``path`` (atomically) and return the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_results_html(results, figure), encoding="utf-8")
    tmp.replace(path)
    return path
