"""Figures for the documentation, drawn from what clconv itself computes.

    python -m clconv.tools.figures docs/im2col.png

`im2col_figure` shows a one-channel 4x4 input and a 3x3 kernel turning into the column matrix
(9 rows, one per kernel tap; 4 columns, one per output position), each input pixel in its own
colour so that its copies can be followed. The matrix is clconv.im2col's own output on the current
device (the input holds the pixel numbers 1..16, so each matrix entry says which pixel it copies).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

__all__ = ["im2col_figure", "main"]


def im2col_figure(path: str | Path, size: int = 4, kernel: int = 3) -> Path:
    """Writes the im2col figure to `path` (PNG); returns its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import clconv

    x = np.arange(1, size * size + 1, dtype=np.float32).reshape(1, 1, size, size)
    cols = clconv.im2col(x, kernel)[0].astype(int)  # (kernel^2, L): entries are pixel numbers
    out = size - kernel + 1
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, size * size, endpoint=False))
    fig, (ax_in, ax_cols) = plt.subplots(1, 2, figsize=(9, 4.6),
                                         gridspec_kw={"width_ratios": [1, 1.15]})

    def cell(ax, col: int, row: int, pixel: int, fontsize: int = 10) -> None:
        ax.add_patch(plt.Rectangle((col, row), 1, 1, facecolor=colours[pixel - 1],
                                   edgecolor="white", linewidth=2))
        ax.text(col + 0.5, row + 0.5, str(pixel), ha="center", va="center", fontsize=fontsize)

    for r in range(size):
        for c in range(size):
            cell(ax_in, c, r, int(x[0, 0, r, c]), 12)
    # The first output position's receptive field, outlined on the input and in the matrix.
    ax_in.add_patch(plt.Rectangle((0, 0), kernel, kernel, fill=False, edgecolor="black",
                                  linewidth=2.5, linestyle="--"))
    ax_in.set_xlim(0, size)
    ax_in.set_ylim(size, 0)
    ax_in.set_aspect("equal")
    ax_in.axis("off")
    ax_in.set_title(f"input: 1 channel, {size}x{size}\n(dashed: the {kernel}x{kernel} window of "
                    f"output (0, 0))", fontsize=9)

    rows, ncols = cols.shape
    for r in range(rows):
        for c in range(ncols):
            cell(ax_cols, c, r, int(cols[r, c]))
    ax_cols.add_patch(plt.Rectangle((0, 0), 1, rows, fill=False, edgecolor="black",
                                    linewidth=2.5, linestyle="--"))
    ax_cols.set_xlim(-1.4, ncols)
    ax_cols.set_ylim(rows, -1.1)
    ax_cols.set_aspect("equal")
    ax_cols.axis("off")
    for r in range(rows):
        ax_cols.text(-0.2, r + 0.5, f"tap ({r // kernel},{r % kernel})", ha="right", va="center",
                     fontsize=7)
    for c in range(ncols):
        ax_cols.text(c + 0.5, -0.15, f"({c // out},{c % out})", ha="center", va="bottom",
                     fontsize=7)
    ax_cols.text(ncols / 2, -0.6, "output position", ha="center", va="bottom", fontsize=7)
    counts = np.bincount(cols.ravel(), minlength=size * size + 1)[1:]
    ax_cols.set_title(f"column matrix: {rows} rows (kernel taps) x {ncols} columns (output "
                      f"positions)\n{cols.size} entries from {size * size} pixels: centre pixels "
                      f"copied {counts.max()} times, corners {counts.min()}", fontsize=9)
    fig.suptitle(f"im2col: a {kernel}x{kernel} convolution becomes one matrix product, weight "
                 f"(1 x {rows}) @ columns ({rows} x {ncols})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = im2col_figure(args[0] if args else "im2col.png")
    print(f"wrote {path.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
