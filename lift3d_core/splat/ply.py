"""The standard 3DGS PLY file (what graphdeco-inria's ``GaussianModel.save_ply`` writes, and viewers read).

One ``vertex`` element, ``binary_little_endian 1.0``, every property ``float`` (float32), in this order::

    x y z  nx ny nz  f_dc_0..2  f_rest_0..3(K-1)-1  opacity  scale_0..2  rot_0..3

Values are stored pre-activation, exactly as optimised: ``opacity`` is the logit, ``scale_i`` the log scale,
``rot_i`` the unnormalised quaternion (w, x, y, z); normals are zero. ``f_rest`` is channel-major: the K-1
higher-order coefficients of R, then those of G, then B (3DGS flattens ``features_rest.transpose(1, 2)``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import Gaussians, num_sh_bases

_FLOAT_TYPES = {"float", "float32"}


def ply_property_names(sh_degree: int) -> list[str]:
    """Property names of a 3DGS PLY of ``sh_degree``, in file order."""
    num_rest = 3 * (num_sh_bases(sh_degree) - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(num_rest)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )


def save_ply(gaussians: Gaussians, path: str | os.PathLike) -> None:
    """Write ``gaussians`` as a 3DGS PLY at ``path`` (atomically: temp file in the same folder, then rename)."""
    arrays = gaussians.to_numpy()
    num = gaussians.num
    names = ply_property_names(gaussians.sh_degree)
    columns = np.concatenate(
        [
            arrays["means"],
            np.zeros((num, 3), np.float32),
            arrays["sh0"].reshape(num, 3),
            arrays["shN"].transpose(0, 2, 1).reshape(num, -1),  # channel-major, as 3DGS
            arrays["opacity_logits"].reshape(num, 1),
            arrays["log_scales"],
            arrays["quats"],
        ],
        axis=1,
    )
    vertices = np.empty(num, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertices[name] = columns[:, i]
    header = "ply\nformat binary_little_endian 1.0\n" f"element vertex {num}\n"
    header += "".join(f"property float {name}\n" for name in names) + "end_header\n"

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(vertices.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_header(f, path) -> tuple[int, list[str], int]:
    """Parse the header; returns (vertex count, property names, header length in bytes)."""
    first = f.readline()
    if first.strip() != b"ply":
        raise Lift3DError(f"{path}: not a PLY file (first line {first[:20]!r})")
    count, names, seen_vertex = None, [], False
    while True:
        raw = f.readline()
        if not raw:
            raise Lift3DError(f"{path}: PLY header has no end_header line")
        words = raw.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            if words[1:] != ["binary_little_endian", "1.0"]:
                fmt = " ".join(words[1:])
                raise Lift3DError(f"{path}: PLY format {fmt!r} unsupported; 3DGS files are binary_little_endian 1.0")
        elif words[0] == "element":
            if seen_vertex:
                raise Lift3DError(f"{path}: PLY has an element after 'vertex'; a 3DGS PLY has only the vertex element")
            if words[1] != "vertex" or len(words) != 3:
                element = " ".join(words[1:])
                raise Lift3DError(f"{path}: PLY element {element!r} unsupported; expected 'element vertex N'")
            count, seen_vertex = int(words[2]), True
        elif words[0] == "property":
            if not seen_vertex:
                raise Lift3DError(f"{path}: PLY property before any element")
            if len(words) != 3 or words[1] not in _FLOAT_TYPES:
                prop = " ".join(words[1:])
                raise Lift3DError(f"{path}: PLY property {prop!r} is not 'float NAME'; 3DGS stores float32")
            names.append(words[2])
        else:
            raise Lift3DError(f"{path}: unexpected PLY header line {raw[:60]!r}")
    if count is None:
        raise Lift3DError(f"{path}: PLY has no vertex element")
    return count, names, f.tell()


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (see the module docstring) into CPU float32 :class:`Gaussians`; the SH degree follows the
    number of ``f_rest_*`` properties. Raises :class:`Lift3DError` on anything else."""
    path = Path(path)
    if not path.is_file():
        raise Lift3DError(f"PLY file not found: {path}")
    with open(path, "rb") as f:
        count, names, _offset = _read_header(f, path)
        payload = f.read()
    if len(set(names)) != len(names):
        raise Lift3DError(f"{path}: PLY has duplicate property names")
    num_rest = sum(name.startswith("f_rest_") for name in names)
    degree = next((d for d in range(4) if 3 * (num_sh_bases(d) - 1) == num_rest), None)
    if degree is None:
        raise Lift3DError(f"{path}: {num_rest} f_rest properties is not 3*((d+1)^2-1) for an SH degree d in 0..3")
    missing = [n for n in ply_property_names(degree) if n not in names and n not in ("nx", "ny", "nz")]
    if missing:
        raise Lift3DError(f"{path}: PLY lacks 3DGS properties {missing}")
    dtype = np.dtype([(name, "<f4") for name in names])
    if len(payload) < count * dtype.itemsize:
        raise Lift3DError(
            f"{path}: PLY truncated: {len(payload)} bytes of data for {count} vertices of {dtype.itemsize} bytes"
        )
    vertices = np.frombuffer(payload, dtype=dtype, count=count)

    def stack(cols: list[str]) -> np.ndarray:
        return np.stack([vertices[c] for c in cols], axis=1).astype(np.float32)

    k1 = num_sh_bases(degree) - 1
    f_rest = stack([f"f_rest_{i}" for i in range(3 * k1)]) if k1 else np.zeros((count, 0), np.float32)
    arrays = {
        "means": stack(["x", "y", "z"]),
        "log_scales": stack([f"scale_{i}" for i in range(3)]),
        "quats": stack([f"rot_{i}" for i in range(4)]),
        "opacity_logits": vertices["opacity"].astype(np.float32).copy(),
        "sh0": stack([f"f_dc_{i}" for i in range(3)]).reshape(count, 1, 3),
        "shN": f_rest.reshape(count, 3, k1).transpose(0, 2, 1).copy(),
    }
    return Gaussians.from_numpy(arrays)
