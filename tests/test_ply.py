import numpy as np
import pytest
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import Gaussians, num_sh_bases
from lift3d_core.splat.ply import load_ply, ply_property_names, save_ply


def _random_gaussians(num: int, degree: int, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    k = num_sh_bases(degree)
    return Gaussians(
        means=torch.randn(num, 3, generator=gen),
        log_scales=torch.randn(num, 3, generator=gen) - 3,
        quats=torch.randn(num, 4, generator=gen),
        opacity_logits=torch.randn(num, generator=gen),
        sh0=torch.randn(num, 1, 3, generator=gen),
        shN=torch.randn(num, k - 1, 3, generator=gen),
    )


def _header(path) -> list[str]:
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:end].decode("ascii").splitlines()


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_exact_round_trip(tmp_path, degree):
    g = _random_gaussians(57, degree)
    p1, p2 = tmp_path / "a.ply", tmp_path / "sub" / "b.ply"
    save_ply(g, p1)
    loaded = load_ply(p1)
    assert loaded.sh_degree == degree
    for name in Gaussians.field_names():
        a, b = getattr(g, name), getattr(loaded, name)
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        assert torch.equal(a.view(torch.int32), b.view(torch.int32)), name  # bit-exact
    save_ply(loaded, p2)
    assert p1.read_bytes() == p2.read_bytes()
    assert not [f for f in p1.parent.iterdir() if f.suffix == ".tmp"]  # no stray temp file


def test_ply_header_layout_and_3dgs_conventions(tmp_path):
    g = _random_gaussians(4, 3)
    path = tmp_path / "g.ply"
    save_ply(g, path)
    lines = _header(path)
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 4"]
    assert lines[-1] == "end_header"
    props = [line.split() for line in lines[3:-1]]
    assert all(p[:2] == ["property", "float"] for p in props)
    names = [p[2] for p in props]
    assert names == ply_property_names(3)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert sum(n.startswith("f_rest_") for n in names) == 45
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]

    data = path.read_bytes()
    body = np.frombuffer(data[data.index(b"end_header\n") + 11 :], dtype="<f4").reshape(4, len(names))
    col = {n: body[:, i] for i, n in enumerate(names)}
    # f_rest is channel-major: f_rest_0..14 = R of bands 1.., f_rest_15..29 = G, f_rest_30..44 = B.
    np.testing.assert_array_equal(col["f_rest_0"], g.shN[:, 0, 0].numpy())
    np.testing.assert_array_equal(col["f_rest_1"], g.shN[:, 1, 0].numpy())
    np.testing.assert_array_equal(col["f_rest_15"], g.shN[:, 0, 1].numpy())
    np.testing.assert_array_equal(col["f_rest_44"], g.shN[:, 14, 2].numpy())
    np.testing.assert_array_equal(col["f_dc_1"], g.sh0[:, 0, 1].numpy())
    np.testing.assert_array_equal(col["opacity"], g.opacity_logits.numpy())  # logit, not sigmoid
    np.testing.assert_array_equal(col["scale_2"], g.log_scales[:, 2].numpy())  # log, not exp
    np.testing.assert_array_equal(col["rot_0"], g.quats[:, 0].numpy())  # w first, unnormalised
    np.testing.assert_array_equal(col["nx"], 0.0)


def test_ply_malformed_files(tmp_path):
    good = tmp_path / "good.ply"
    save_ply(_random_gaussians(5, 1), good)
    data = good.read_bytes()

    cases = {
        "not_ply.ply": b"hello\n",
        "ascii.ply": data.replace(b"binary_little_endian", b"ascii", 1),
        "truncated.ply": data[:-7],
        "no_end.ply": data[: data.index(b"end_header")],
        "missing_prop.ply": data.replace(b"property float opacity\n", b"", 1),
        "double.ply": data.replace(b"property float x\n", b"property double x\n", 1),
        "bad_rest.ply": data.replace(b"property float f_rest_8\n", b"", 1),
    }
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(Lift3DError):
            load_ply(p)
    with pytest.raises(Lift3DError, match="not found"):
        load_ply(tmp_path / "absent.ply")
