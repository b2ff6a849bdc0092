"""What every calibration backend promises, stated as code.

A :class:`~lift3d_core.calibrate.Calibration` lives in the backend's own world,
normalised by the method's rule (cloud centred on its mean, largest absolute
coordinate ``normalize_extent``). That world is *not* the commanded one: COLMAP's
has an arbitrary rotation, origin and scale; MASt3R's puts the input view at the
origin with its own scale. Three facts make results comparable across backends:

* the resolution a backend runs at (:data:`CONTRACTS`, :func:`run_resolution`);
  whatever it is, the arrays of a Calibration are at the frame size;
* the scale of its confidence (MASt3R's lies in [1, inf), COLMAP's and the
  commanded one's in [0, 1]); :func:`confidence_weight` maps any of them to [0, 1];
* the similarity that maps the calibrated (normalised) frame to the commanded
  one, ``x_cmd = s R x_cal + t``, fitted on the whole camera poses: the rotation
  from the camera rotations, scale and shift from the centres
  (:func:`fit_to_commanded`). Evaluation moves ground-truth cameras with its
  inverse, export states it beside the PLY.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lift3d_core.errors import Lift3DError
from lift3d_core.metrics import align_poses


@dataclass(frozen=True)
class BackendContract:
    """resolution: how the backend picks the size it runs at (words; :func:`run_resolution` computes it).
    confidence_range: ``(low, high)`` of the confidence it returns (``high`` may be ``inf``)."""

    resolution: str
    confidence_range: tuple[float, float]


CONTRACTS: dict[str, BackendContract] = {
    "commanded": BackendContract("the frame size (it computes nothing from pixels)", (0.0, 1.0)),
    "colmap": BackendContract("the frame size (SIFT sees it upsampled to colmap.feature_width, then twice more "
                              "internally, first_octave -1)", (0.0, 1.0)),
    # DUSt3R/MASt3R's conf_mode ('exp', 1, inf): conf = 1 + exp(x)
    "mast3r": BackendContract("DUSt3R's load_images: longest side mast3r.image_size (512), both sides cropped to "
                              "multiples of 16, a square cropped to 4:3",
                              (1.0, float("inf"))),
}


def run_resolution(backend: str, frame_hw: tuple[int, int], image_size: int | None = None) -> tuple[int, int]:
    """``(h, w)`` the backend runs at for frames of ``frame_hw``; ``image_size`` is mast3r's longest side."""
    if backend not in CONTRACTS:
        raise Lift3DError(f"no calibration contract for backend {backend!r}; known: {', '.join(CONTRACTS)}")
    h, w = frame_hw
    if backend != "mast3r":
        return int(h), int(w)
    from lift3d_core.calibrate.mast3r.inference import network_view  # the reference's resize and crop

    return network_view((int(h), int(w)), image_size or 512).net_hw


def confidence_weight(confidence: np.ndarray, backend: str) -> np.ndarray:
    """A backend's confidence as a weight in [0, 1] (0 = unknown): identity on [0, 1], ``1 - 1/c`` on [1, inf)."""
    low, high = CONTRACTS[backend].confidence_range
    c = np.asarray(confidence, dtype=np.float32)
    if high == float("inf"):
        return np.where(c > low, 1.0 - low / np.maximum(c, low), 0.0).astype(np.float32)
    return np.clip((c - low) / (high - low), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Similarity:
    """``x_dst = scale * R @ x_src + t``. R: ``[3, 3]`` float64 proper rotation; t: ``[3]`` float64."""

    scale: float
    R: np.ndarray
    t: np.ndarray

    @classmethod
    def identity(cls) -> Similarity:
        return cls(1.0, np.eye(3), np.zeros(3))

    def inverse(self) -> Similarity:
        Rt = np.asarray(self.R).T
        return Similarity(1.0 / self.scale, Rt, -(Rt @ np.asarray(self.t)) / self.scale)

    def apply_points(self, xyz: np.ndarray) -> np.ndarray:
        """Points ``[..., 3]`` -> ``[..., 3]`` float64."""
        return self.scale * np.asarray(xyz, dtype=np.float64) @ np.asarray(self.R).T + self.t

    def apply_c2w(self, c2w: np.ndarray) -> np.ndarray:
        """Cameras ``c2w [..., 4, 4]`` (OpenCV) into the destination frame: rotate and move the centre.
        The camera's own scale does not change: depth in the destination is ``scale`` times the source's."""
        out = np.array(c2w, dtype=np.float64, copy=True)
        out[..., :3, :3] = np.asarray(self.R) @ out[..., :3, :3]
        out[..., :3, 3] = self.apply_points(out[..., :3, 3])
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What the calibrate artifact stores: ``to_commanded/{scale [1], R [3, 3], t [3]}``."""
        return {"to_commanded/scale": np.array([self.scale]), "to_commanded/R": np.asarray(self.R, np.float64),
                "to_commanded/t": np.asarray(self.t, np.float64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Similarity:
        return cls(float(np.asarray(arrays["to_commanded/scale"]).ravel()[0]), np.asarray(arrays["to_commanded/R"]),
                   np.asarray(arrays["to_commanded/t"]))


def fit_to_commanded(c2w_calibrated: np.ndarray, c2w_commanded: np.ndarray,
                     registered: np.ndarray | None = None) -> Similarity:
    """The similarity mapping calibrated cameras onto commanded ones, fitted on the whole poses.

    c2w_calibrated, c2w_commanded: ``[F, 4, 4]`` OpenCV; registered: ``[F]`` bool, frames to fit on. The rotation
    is the chordal mean of ``R_cmd R_cal^T`` and scale and shift the least-squares fit of the centres
    (:func:`lift3d_core.metrics.align_poses`): a fit on the centres alone takes its rotation from the shape the
    centres draw, which structure from motion bends by a few percent, and evaluation applies that rotation to
    every held-out camera.
    """
    sel = np.ones(len(c2w_calibrated), bool) if registered is None else np.asarray(registered, bool)
    if sel.sum() < 2:
        raise Lift3DError(f"cannot relate the calibration to the commanded cameras: {int(sel.sum())} registered frame(s)")
    s, R, t = align_poses(c2w_calibrated[sel], c2w_commanded[sel])
    return Similarity(s, R, t)
