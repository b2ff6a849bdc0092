"""Drawing a camera tree (:func:`plot_tree`); matplotlib is imported only when one is drawn."""

from __future__ import annotations

import numpy as np

from lift3d_core.trajectory.tree import CameraTree


def plot_tree(tree: CameraTree, path_png, *, arrows_per_clip: int = 2) -> None:
    """Top view (x-z) and side view (z-y, y down as OpenCV) of a camera tree, saved as PNG.

    Camera centres are dots coloured by clip; short arrows show the viewing direction
    (+z) of ``arrows_per_clip`` frames of each clip (always its last); the input camera is a star.
    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    centres = tree.c2w()[:, :3, 3]

    fig = Figure(figsize=(12, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax_top, ax_side = fig.subplots(1, 2)
    cmap = colormaps["tab20"]
    views = ((ax_top, 0, 2, "x (right)", "z (forward)", "top view (x-z)"),
             (ax_side, 2, 1, "z (forward)", "y (down)", "side view (z-y, y down)"))
    # Arrow length: a small fraction of each view's extent, so both views read alike.
    arrow = {id(ax): 0.07 * max(float(np.ptp(centres[:, [i, j]], axis=0).max()), 1e-3) for ax, i, j, *_ in views}

    def draw_arrow(ax, x, y, dx, dy, colour):
        a = arrow[id(ax)]
        ax.arrow(x, y, a * dx, a * dy, color=colour, width=0.0, head_width=0.25 * a, head_length=0.3 * a,
                 length_includes_head=True)

    for k, clip in enumerate(tree.clips):
        colour = cmap(k % 20)
        pos = clip.c2w[:, :3, 3]
        fwd = clip.c2w[:, :3, 2]
        pick = np.unique(np.linspace(0, clip.num_frames - 1, arrows_per_clip + 1).round().astype(int)[1:])
        for ax, i, j, *_ in views:
            ax.plot(pos[:, i], pos[:, j], "-", color=colour, lw=0.8, alpha=0.6)
            ax.scatter(pos[1:, i], pos[1:, j], s=9, color=colour, label=clip.clip_id if ax is ax_top else None)
            for f in pick:
                draw_arrow(ax, pos[f, i], pos[f, j], fwd[f, i], fwd[f, j], colour)
    for ax, i, j, xl, yl, title in views:
        ax.scatter([0.0], [0.0], marker="*", s=120, color="k", zorder=5, label="input" if ax is ax_top else None)
        draw_arrow(ax, 0.0, 0.0, float(i == 2), float(j == 2), "k")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(True, lw=0.3)
    ax_side.invert_yaxis()  # OpenCV y points down: up (-y) at the top of the plot
    fig.legend(loc="center right", fontsize=7, ncol=1, frameon=False)
    fig.subplots_adjust(left=0.06, right=0.82, wspace=0.25)
    fig.savefig(str(path_png), dpi=110)
