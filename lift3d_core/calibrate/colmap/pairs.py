"""Which frames COLMAP matches: the tree's clips, parent-child links and commanded neighbours."""

from __future__ import annotations

import numpy as np

from lift3d_core.calibrate.colmap.config import ColmapConfig


def pair_graph(layout, c2w_commanded: np.ndarray, cfg: ColmapConfig) -> list[tuple[int, int]]:
    """Image pairs to match, as sorted ``(i, j)`` distinct-frame indices with ``i < j``.

    layout: :class:`lift3d_core.calibrate.FrameLayout`; c2w_commanded: ``[F, 4, 4]`` OpenCV.
    """
    pairs: set[tuple[int, int]] = set()

    def add(i: int, j: int) -> None:
        if i != j:
            pairs.add((min(i, j), max(i, j)))

    clips = layout.clip_frames()
    for clip_id, seq in clips.items():
        for a in range(len(seq)):
            for b in range(a + 1, min(len(seq), a + 1 + cfg.sequential_overlap)):
                add(seq[a], seq[b])
        parent = layout.parents[clip_id]
        if parent is not None:
            for i in clips[parent][-cfg.link_overlap:]:
                for j in seq[: cfg.link_overlap + 1]:
                    add(i, j)
    k = min(cfg.commanded_neighbors, len(c2w_commanded) - 1)
    if k > 0:
        centres, forward = c2w_commanded[:, :3, 3], c2w_commanded[:, :3, 2]
        spread = float(np.sqrt(((centres - centres.mean(0)) ** 2).sum(1).mean())) or 1.0
        angle = np.degrees(np.arccos(np.clip(forward @ forward.T, -1.0, 1.0)))
        # 30 degrees of turn weigh as much as the rig's RMS spread of travel; beyond 60 degrees views rarely overlap
        dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1) / spread + angle / 30.0
        dist[angle > 60.0] = np.inf
        np.fill_diagonal(dist, np.inf)
        for i in range(len(dist)):
            for j in np.argsort(dist[i])[:k]:
                if np.isfinite(dist[i, j]):
                    add(i, int(j))
    return sorted(pairs)
