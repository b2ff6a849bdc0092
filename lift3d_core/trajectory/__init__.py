"""The articulated camera tree of LiftImage3D, as data.

Instead of one long camera move, the method chains short clips in a tree:
level 1 runs every preset motion from the input camera; level k restarts every
preset from the last frame of every level-(k-1) clip (``child c2w =
parent_last_c2w @ preset_relative_c2w``). Clip ids are tree paths of preset
names (``"U"``, ``"U/Round-RI_90"``); frame ``t = 0`` of a child is its
parent's last frame, and of a level-1 clip the input view.

Geometry (``Clip.c2w``) is in the world of the lift: the input camera is the
identity, OpenCV axes (x right, y down, z forward), see :mod:`lift3d_core.camera`.

MotionCtrl presets. The reference (AbrahamYabo/LiftImage3D, folder
``motionctrlsvd/examples/camera_poses``, files ``test_camera_{U,D,L,R,I,O,
Round-RI_90,Round-RI_f90}.json``; all but Round-RI_f90 are identical to
TencentARC/MotionCtrl ``examples/camera_poses``) ships 16 rows of world-to-camera
``[R | t]`` (OpenCV axes) per preset. Their numbers, read there and generated
here parametrically (:meth:`Preset.json_rows`; for 16 frames they equal the
files' numbers to float rounding, max abs difference 3e-15):

* translations ``U D L R I O``: ``R = I``, ``t_i = -(0.2 + 1.4 * i / 16) * d``
  with ``d`` the camera's direction of motion (U: -y, D: +y, L: -x, R: +x,
  I: +z, O: -z). The camera moves 1.4 / 16 = 0.0875 per frame, 1.3125 by frame 15.
  The 0.2 start offset cancels once poses are made relative to frame 0.
* orbits ``Round-RI_90`` (camera moves right) / ``Round-RI_f90`` (left):
  ``R_i = Ry(+-theta_i)``, ``theta_i = 90 deg * i / 16`` (so frame 15 is at
  84.375 deg, not 90: the files sample [0, 90) deg), ``t_i = R_i (0, 0, 0.9) +
  (0, 0, 0.8)``. The point 0.8 ahead of the first camera stays on every
  frame's optical axis at distance 0.8: an orbit of radius 0.8 about a pivot
  0.8 ahead (MotionCtrl's own ``app.py`` uses ``look_at = (0, 0, 0.8)``). The
  files' world origin, 1.7 = 0.8 + 0.9 ahead of the first camera, is *not*
  the orbit centre; the 0.9 only matters for the conditioning below.

Conditioning, geometry, speed and units. The reference multiplies the JSON
translations per axis by ``(3, 1, 4) * speed`` (speed 1.6) and only then makes
them relative to frame 0 (``motionctrlsvd/main/inference/motionctrl_cmcm_run.py``,
``get_RT``); those 12 numbers per frame are all MotionCtrl-SVD ever sees
(:func:`motionctrl_conditioning`, applied by the MotionCtrl-SVD generator to the
pose-file rows each clip keeps in ``Clip.motionctrl_rows``; ``speed`` is
``generate.motionctrl_svd.speed``, so changing it re-keys generation only).
Because the scaling comes before the relativisation, the file's 0.9 origin
offset enters the orbit: the commanded orbit still keeps one point (the pivot)
on every optical axis, at ``(4 * 0.8 + (4 - 3) * 0.9) = 4.1`` (times speed)
at the start and ``3.2 + 0.9 cos theta`` later (3.29 at frame 15: a 20 %
spiral in), while U / D move 1.3125 per clip (a third of the pivot distance),
L / R three and I / O four times that. ``TrajectoryConfig.geometry`` picks
what ``Clip.c2w`` holds:

* ``"conditioning"`` (default): the camera motion MotionCtrl-SVD is commanded,
  i.e. the conditioning rows read as relative world-to-camera poses: the
  reference's actual command, and coherent with a scene near the pivot (a U
  clip moves a third of the pivot depth, the orbits keep the pivot in view).
* ``"json"``: the files' shapes (pure orbit about a pivot at the orbit radius,
  84.375 degrees; translations 1.3125 / 0.8 = 1.64 pivot depths per clip, so a
  scene at the pivot leaves the view in a U clip).

Commanded poses have no absolute scale, and ``speed`` multiplies every
conditioning translation uniformly, so the commanded *shape* does not depend
on it. The world unit of the geometry is therefore fixed by
``TrajectoryConfig.pivot_depth`` (default 1.7, METHOD.md's "point about 1.7
units ahead" and the synthetic scene's layout): the distance from an orbit
clip's first camera to its pivot. ``speed`` acts on the conditioning only
(how far MotionCtrl is asked to move relative to the scene it imagines);
custom JSON trees use the same unit, so a custom copy of a preset file gives
the preset's geometry. The generated video's real motion is measured by
calibration in any case.

Frame codes (METHOD.md section 3). Each frame gets ``(u, v)`` steps on the
trajectory grid: a clip adds ``t`` (0..T-1) steps along its preset's axis to
its parent's last frame's steps. Signs follow the reference's dataset reader
(``distort-3dgs/scene/dataset_readers.py``): ``u`` grows for L and the left
orbit (Round-RI_f90), falls for R and the right orbit; ``v`` grows for U, falls
for D. I/O share ``v`` with U/D (I as U, O as D): the reference never uses them.
Normalised as ``(step + L (T - 1)) / (2 L (T - 1))`` with ``L = levels`` (the
reference's ``(step + 2 * 15) / (4 * 15)`` for L = 2, T = 16), so the input view
is ``(0.5, 0.5)`` and every code lies in [0, 1].

Modules: :mod:`~lift3d_core.trajectory.presets` (MotionCtrl presets, conditioning, clip geometry),
:mod:`~lift3d_core.trajectory.tree` (config, clips, the tree), :mod:`~lift3d_core.trajectory.pose_files`
(MotionCtrl pose JSON files, custom trees) and :mod:`~lift3d_core.trajectory.plot` (drawing a tree).
"""

from lift3d_core.trajectory.plot import plot_tree
from lift3d_core.trajectory.pose_files import load_motionctrl_json, save_motionctrl_json, tree_from_motionctrl
from lift3d_core.trajectory.presets import (
    GEOMETRIES,
    MOTIONCTRL_AXIS_SCALE,
    PRESETS,
    Preset,
    motionctrl_conditioning,
    preset_relative_c2w,
)
from lift3d_core.trajectory.tree import CameraTree, Clip, TrajectoryConfig, articulated_tree

__all__ = [
    "GEOMETRIES",
    "MOTIONCTRL_AXIS_SCALE",
    "PRESETS",
    "CameraTree",
    "Clip",
    "Preset",
    "TrajectoryConfig",
    "articulated_tree",
    "load_motionctrl_json",
    "motionctrl_conditioning",
    "plot_tree",
    "preset_relative_c2w",
    "save_motionctrl_json",
    "tree_from_motionctrl",
]
