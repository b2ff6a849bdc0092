"""The viewer's wire format for Gaussians: what ``static/viewer.js`` draws, computed once in Python.

The browser needs, per Gaussian, only its centre, its world covariance and a colour with opacity: the
covariance ``R diag(s^2) R^T`` and the activations (``exp``, ``sigmoid``, the DC colour ``SH_C0 * sh0 + 0.5``)
are applied here, so the page neither parses a PLY nor knows the pre-activation layout. Higher SH degrees are
dropped: the page shows each Gaussian's view-independent colour.

Layout, little-endian, ``HEADER_BYTES + N * 40`` bytes::

    magic b"L3DS", version u32 (1), N u32, reserved u32
    means  float32 [N, 3]   world frame
    cov    float32 [N, 6]   xx, xy, xz, yy, yz, zz of the world covariance
    rgba   uint8   [N, 4]   DC colour clamped to [0, 1], opacity, each * 255 rounded
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import Gaussians, sh0_to_rgb

MAGIC = b"L3DS"
VERSION = 1
HEADER_BYTES = 16
COV_ORDER = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))  # the 6 stored entries of the symmetric [3, 3]


def _rotmats(quats: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``[N, 4]`` (w, x, y, z) -> rotation matrices ``[N, 3, 3]``."""
    w, x, y, z = quats.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


@torch.no_grad()
def splat_arrays(gaussians: Gaussians) -> dict[str, np.ndarray]:
    """``means float32 [N, 3]``, ``cov float32 [N, 6]`` (see ``COV_ORDER``), ``rgba uint8 [N, 4]``."""
    g = gaussians.to("cpu").map(lambda t: t.detach().double())
    R = _rotmats(g.unit_quats)
    M = R * g.scales[:, None, :]  # R diag(s): its columns are the scaled axes
    cov = M @ M.transpose(1, 2)
    rgb = sh0_to_rgb(g.sh0[:, 0, :]).clamp(0.0, 1.0)
    rgba = torch.cat([rgb, g.opacities[:, None]], dim=1)
    return {
        "means": g.means.float().numpy(),
        "cov": torch.stack([cov[:, i, j] for i, j in COV_ORDER], dim=1).float().numpy(),
        "rgba": (rgba * 255.0 + 0.5).floor().clamp(0, 255).to(torch.uint8).numpy(),
    }


def pack_splats(gaussians: Gaussians) -> bytes:
    """The wire format (module docstring) of ``gaussians``."""
    a = splat_arrays(gaussians)
    n = a["means"].shape[0]
    header = MAGIC + struct.pack("<III", VERSION, n, 0)
    return b"".join([header, a["means"].astype("<f4").tobytes(), a["cov"].astype("<f4").tobytes(),
                     a["rgba"].tobytes()])


def unpack_splats(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack_splats` (what the page reads), for tests and tools."""
    if len(data) < HEADER_BYTES or data[:4] != MAGIC:
        raise Lift3DError("not a lift3d splat buffer (bad magic)")
    version, n, _ = struct.unpack("<III", data[4:HEADER_BYTES])
    if version != VERSION or len(data) != HEADER_BYTES + 40 * n:
        raise Lift3DError(f"splat buffer version {version}, {len(data)} bytes: not version {VERSION} of {n} splats")
    off = HEADER_BYTES
    means = np.frombuffer(data, "<f4", 3 * n, off).reshape(n, 3)
    cov = np.frombuffer(data, "<f4", 6 * n, off + 12 * n).reshape(n, 6)
    rgba = np.frombuffer(data, np.uint8, 4 * n, off + 36 * n).reshape(n, 4)
    return {"means": means, "cov": cov, "rgba": rgba}
