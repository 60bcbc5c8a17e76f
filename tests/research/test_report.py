"""The demo's figures (``examples/report.py``): sample grids drawn at a whole-number zoom large enough to
read, bin-usage axes labelled with whole level indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from examples import report


def _runs(line: np.ndarray) -> list[int]:
    """Lengths of the runs of equal values along a 1-D array."""
    edges = np.flatnonzero(np.diff(line) != 0)
    return np.diff(np.concatenate([[-1], edges, [line.size - 1]])).tolist()


@pytest.mark.parametrize("panels", [1, 2])
def test_sample_grids_are_readable_and_every_image_pixel_is_an_even_block(tmp_path, panels):
    torch.manual_seed(0)
    images = torch.rand(100, 1, 16, 16) * 2 - 1  # 10 x 10 digits of 16 x 16 pixels, every pixel distinct from its neighbours
    report.save_grid_figure(tmp_path / "grid.png", [(f"panel {i}", images, 10) for i in range(panels)])
    png = np.asarray(Image.open(tmp_path / "grid.png").convert("L"))
    mosaic = 10 * 17 - 1  # 10 images and 9 one-pixel gaps a side
    assert png.shape[0] >= report.MOSAIC_PIXELS and png.shape[1] >= panels * report.MOSAIC_PIXELS
    middle = png[png.shape[0] // 2 + 3]  # a row of pixels through every panel
    runs = _runs(middle)[1:-1]  # less the white margins at either end
    zoom = min(runs)
    assert zoom == -(-report.MOSAIC_PIXELS // mosaic)  # the smallest whole zoom that reaches MOSAIC_PIXELS: 4
    assert all(r % zoom == 0 for r in runs)  # no pixel drawn wider or narrower than another
    assert sum(runs) >= panels * mosaic * zoom


def test_reconstruction_rows_share_one_whole_number_zoom(tmp_path):
    torch.manual_seed(1)
    real, fsq, ifsq = (torch.rand(16, 1, 16, 16) * 2 - 1 for _ in range(3))
    report.save_reconstruction_figure(tmp_path / "rec.png", real, {"fsq": fsq, "ifsq": ifsq})
    width = Image.open(tmp_path / "rec.png").size[0]
    assert width >= report.MOSAIC_PIXELS


def test_bin_usage_ticks_are_whole_level_indices(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rng = np.random.default_rng(0)
    levels = [17, 5, 8]
    counts = {kind: rng.integers(0, 50, size=(3, 17)) for kind in ("fsq", "ifsq")}
    report.save_usage_figure(tmp_path / "usage.png", counts, levels)
    (fig,) = figures
    for ax, L in zip(fig.axes, levels):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert len(ticks) >= 3 and all(float(t).is_integer() and 0 <= t <= L - 1 for t in ticks), (L, ticks)
    monkeypatch.undo()
    plt.close(fig)
