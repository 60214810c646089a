"""Matplotlib figures for results and reports."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

_Figure = TypeVar("_Figure", bound=Callable[..., Any])


def pyplot() -> Any:
    """matplotlib's ``pyplot`` on the file-only Agg backend (imported when a figure is drawn: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_text(function: _Figure) -> _Figure:
    """
    Draw a figure function's text as given: matplotlib reads ``$…$`` as math markup, so a user's label holding a
    ``$`` would be drawn as a formula, or stop the figure (and the report after it) with a parse error.
    """

    @functools.wraps(function)
    def drawn(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return function(*args, **kwargs)

    return drawn  # type: ignore[return-value]


@plain_text
def reconstruction_grid(
    rows: list[tuple[str, np.ndarray | None, dict[str, np.ndarray]]],
    attacks: list[str],
    path: str | Path,
    data_range: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """
    Save a grid of original | reconstruction per attack.

    :param rows: One entry per image: (row label, original ``(C, H, W)`` or ``None`` where there is none (the cell
                 stays empty), attack → reconstruction).
    :param attacks: Column order of the attacks.
    :param path: Output PNG path.
    :param data_range: The images' pixel range (the model's ``clip_values``), shown from black to white.
    :return: The path written.
    """
    low, high = data_range
    plt = pyplot()
    columns = ["original", *attacks]
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(1.3 * len(columns) + 1.6, 1.3 * len(rows)), squeeze=False
    )
    for r, (label, original, recs) in enumerate(rows):
        for c, name in enumerate(columns):
            ax = axes[r][c]
            image = original if name == "original" else recs.get(name)
            if image is not None:
                shown = np.clip((np.transpose(image, (1, 2, 0)) - low) / (high - low), 0.0, 1.0)
                ax.imshow(shown.squeeze(-1) if shown.shape[-1] == 1 else shown, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
