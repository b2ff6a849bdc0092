"""The ``calibrate.mast3r`` section (importable without the model code)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from lift3d_core.config import canonical_dtype
from lift3d_core.errors import Lift3DError

CHECKPOINT_NAME = "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth"
INITS = ("mst", "commanded")
SCHEDULES = ("cosine", "linear")
# fields that change only the speed, never the numbers: not part of the store key
_SPEED_ONLY = ("batch_size", "device")


@dataclass(frozen=True)
class Mast3rConfig:
    """The ``calibrate.mast3r`` section.

    checkpoint: path of the weights file (its digest, not its path, enters the store key).
    image_size: longest side of the network views (512: the checkpoint's; the reference uses 448).
    neighbours: pair frames at most this many steps apart within a clip (0: the reference's graph).
    init: "commanded" (the trajectory's cameras) or "mst" (DUSt3R's spanning-tree chaining).
    iterations, lr, schedule: the alignment's Adam run (reference: 400, 0.01, cosine).
    min_conf_thr: confidence (MASt3R's [1, inf) scale) a pixel needs to enter the fused cloud.
    dtype: autocast precision of the encoder and decoders (float32 as the reference, or bfloat16).
    batch_size: pairs per forward pass; speed only, not hashed.
    device: "auto" (CUDA when present) or a torch device; speed only, not hashed.
    """

    checkpoint: str = f"checkpoints/{CHECKPOINT_NAME}"
    image_size: int = 512
    neighbours: int = 1
    init: str = "commanded"
    iterations: int = 400
    lr: float = 0.01
    schedule: str = "cosine"
    min_conf_thr: float = 3.0
    dtype: str = "float32"
    batch_size: int = 8
    device: str = "auto"

    def __post_init__(self):
        where = "calibrate.mast3r"
        if self.image_size < 64 or self.image_size % 16:
            raise Lift3DError(f"{where}.image_size must be a multiple of 16 and >= 64, got {self.image_size}")
        if self.neighbours < 0:
            raise Lift3DError(f"{where}.neighbours must be >= 0, got {self.neighbours}")
        if self.init not in INITS:
            raise Lift3DError(f"{where}.init must be one of {INITS}, got {self.init!r}")
        if self.schedule not in SCHEDULES:
            raise Lift3DError(f"{where}.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.iterations < 0 or not self.lr > 0:
            raise Lift3DError(f"{where}: iterations must be >= 0 and lr > 0, got {self.iterations}, {self.lr}")
        if self.min_conf_thr < 1.0:
            raise Lift3DError(f"{where}.min_conf_thr is on MASt3R's [1, inf) scale; got {self.min_conf_thr}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype, f"{where}.dtype"))
        if self.batch_size < 1:
            raise Lift3DError(f"{where}.batch_size must be >= 1, got {self.batch_size}")

    def key_params(self) -> dict:
        """What the store key hashes: every field but the speed-only ones and the file name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _SPEED_ONLY and f.name != "checkpoint"}

