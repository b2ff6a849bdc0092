"""The pair graph MASt3R runs on: every frame against the input view, plus neighbours within a clip.

The reference (LiftImage3D's ``calc_pose_inthewild_motionctrl.py``) uses DUSt3R's ``oneref-0``
graph, symmetrised: each frame paired with the input view (distinct frame 0) in both orders.
We add pairs of frames at most ``neighbours`` steps apart within a clip, also in both orders,
so far frames of a level-2 clip are tied to their neighbours and not only to the input view.
"""

from __future__ import annotations

import numpy as np

from lift3d_core.errors import Lift3DError


def make_pairs(clip_of_frame: np.ndarray, *, neighbours: int = 1, reference: int = 0) -> np.ndarray:
    """Directed pairs ``(i, j)`` over distinct frames: ``int64 [E, 2]``, symmetrised.

    clip_of_frame: ``int [F]``, the clip each distinct frame belongs to (frames of a clip appear in
    increasing time order; the reference frame's own entry is not used). Every frame is paired with
    ``reference``; frames of one clip whose ranks differ by at most ``neighbours`` are paired too.
    Each unordered pair appears once per order: ``(i, j)`` then ``(j, i)``, unordered pairs sorted.
    """
    clip_of_frame = np.asarray(clip_of_frame)
    n = clip_of_frame.shape[0]
    if clip_of_frame.ndim != 1 or n < 2:
        raise Lift3DError(f"MASt3R needs clip membership for at least 2 frames, got shape {clip_of_frame.shape}")
    if not 0 <= reference < n:
        raise Lift3DError(f"reference frame {reference} is outside the {n} frames")
    if neighbours < 0:
        raise Lift3DError(f"calibrate.mast3r.neighbours must be >= 0, got {neighbours}")
    unordered = {(min(reference, j), max(reference, j)) for j in range(n) if j != reference}
    others = np.array([f for f in range(n) if f != reference])
    for clip in np.unique(clip_of_frame[others]):
        members = others[clip_of_frame[others] == clip]
        for k in range(1, neighbours + 1):
            unordered.update(zip(members[:-k].tolist(), members[k:].tolist()))
    pairs = []
    for i, j in sorted(unordered):
        pairs += [(i, j), (j, i)]
    return np.asarray(pairs, dtype=np.int64)


def clip_membership(tree) -> np.ndarray:
    """``int64 [F]``: for each distinct frame of a :class:`~lift3d_core.trajectory.CameraTree`, the index
    of the clip it first appears in with t >= 1 (0 for the input view, which every level-1 clip shares)."""
    out = np.zeros(tree.num_distinct_frames, dtype=np.int64)
    ids = tree.clip_ids()
    for (clip_id, t), d in zip(tree.frame_ids(), tree.distinct_frame_index()):
        if t > 0:
            out[d] = ids.index(clip_id)
    return out
