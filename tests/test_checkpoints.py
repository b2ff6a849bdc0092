"""The checkpoint registry: paths, cached digests, safe loading, verify."""

import argparse
import hashlib
import os

import pytest
import torch

from lift3d_core import checkpoints as ck
from lift3d_core.errors import Lift3DError


class _Payload:  # a class no allow-list names: loading it must be refused, not executed
    pass


def test_checkpoint_path_names_file_and_source(tmp_path):
    with pytest.raises(Lift3DError, match=r"motionctrl_svd\.ckpt is missing.*huggingface\.co/TencentARC/MotionCtrl"):
        ck.checkpoint_path("motionctrl_svd", root=tmp_path)
    (tmp_path / "motionctrl_svd.ckpt").write_bytes(b"")
    with pytest.raises(Lift3DError, match=r"empty"):
        ck.checkpoint_path("motionctrl_svd", root=tmp_path)
    (tmp_path / "motionctrl_svd.ckpt").write_bytes(b"x")
    assert ck.checkpoint_path("motionctrl_svd", root=tmp_path) == tmp_path / "motionctrl_svd.ckpt"
    with pytest.raises(Lift3DError, match=r"unknown checkpoint"):
        ck.checkpoint_path("sd15")


def test_digest_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    cache = tmp_path / "digests.json"
    monkeypatch.setenv("LIFT3D_DIGEST_CACHE", str(cache))
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    expected = "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert ck.digest(f) == expected and cache.is_file()
    # A cache hit does not read the file: a forged entry with the same stamp is returned as is.
    text = cache.read_text().replace(expected, "sha256:cached")
    cache.write_text(text)
    assert ck.digest(f) == "sha256:cached"
    f.write_bytes(b"abcd")  # new size: hashed again
    os.utime(f, ns=(1, 1))
    assert ck.digest(f) == "sha256:" + hashlib.sha256(b"abcd").hexdigest()


def test_load_torch_allows_only_listed_globals(tmp_path):
    ok = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(model="AsymmetricMASt3R()")}, ok)
    with pytest.raises(Lift3DError, match=r"ok.pth holds objects outside the allowed list"):
        ck.load_torch(ok)
    data = ck.load_torch(ok, allowed_globals=[argparse.Namespace])
    assert torch.equal(data["model"]["w"], torch.ones(2)) and data["args"].model.startswith("AsymmetricMASt3R")
    evil = tmp_path / "evil.pth"
    torch.save({"x": _Payload()}, evil)
    with pytest.raises(Lift3DError, match=r"refused without unpickling"):
        ck.load_torch(evil)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(ok.read_bytes()[:100])
    with pytest.raises(Lift3DError, match=r"cut.pth.*(truncated|not a torch checkpoint)"):
        ck.load_torch(cut, source="https://example.org")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(Lift3DError, match=r"not a torch checkpoint"):
        ck.load_torch(text)


def test_verify_reports_each_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("LIFT3D_DIGEST_CACHE", str(tmp_path / "digests.json"))
    assert dict(ck.verify(tmp_path)) == dict.fromkeys(ck.CHECKPOINTS, "missing")
    import torch

    torch.save({"w": torch.zeros(3)}, tmp_path / "depth_anything_v2_vitl.pth")
    good = (tmp_path / "depth_anything_v2_vitl.pth").read_bytes()
    (tmp_path / "motionctrl_svd.ckpt").write_bytes(good[: len(good) // 2])  # a download cut short
    monkeypatch.setitem(ck.CHECKPOINTS, "mast3r", ck.CheckpointSpec(
        "mast3r", "m.pth", "somewhere", "calibrate", size=3, sha256=hashlib.sha256(b"abd").hexdigest()))
    (tmp_path / "m.pth").write_bytes(b"abc")
    status = dict(ck.verify(tmp_path))
    assert status["depth_anything_v2"] == "present" and status["motionctrl_svd"].startswith("damaged")
    assert status["mast3r"].startswith("mismatched: sha256")


def test_relative_checkpoint_paths_are_the_projects_wherever_the_command_runs(tmp_path, monkeypatch):
    from lift3d_core.checkpoints import checkpoint_path

    project = tmp_path / "project"
    (project / "checkpoints").mkdir(parents=True)
    (project / "checkpoints" / "motionctrl_svd.ckpt").write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("LIFT3D_PROJECT", str(project))
    assert checkpoint_path("motionctrl_svd", "checkpoints/motionctrl_svd.ckpt") == \
        project / "checkpoints" / "motionctrl_svd.ckpt"


def test_a_copy_with_the_same_size_and_mtime_gets_its_own_digest(tmp_path, monkeypatch):
    import os
    import shutil

    from lift3d_core.checkpoints import digest

    monkeypatch.setenv("LIFT3D_DIGEST_CACHE", str(tmp_path / "digests.json"))
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    a.write_bytes(b"weights-1")
    b.write_bytes(b"weights-2")
    first = digest(a)
    st = a.stat()
    os.replace(b, a)  # same path, same size: other bytes
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime, as cp -p or rsync -t keep it
    assert digest(a) != first
    shutil.copy(a, b)
    assert digest(b) == digest(a)


def test_a_backend_whose_package_is_missing_says_what_to_install():
    from lift3d_core.registry import Backend

    with pytest.raises(Lift3DError, match=r"depth\.backend=x needs the Python package 'no_such_package_lift3d'.*"
                                          r"pip install 'lift3d\[depth\]'"):
        Backend("no_such_package_lift3d.module:estimate", extra="depth").load("depth", "x")
    assert Backend("lift3d_core.registry:section_key").load("any", "y").__name__ == "section_key"


def test_a_model_is_built_once_per_file_and_again_when_the_file_changes(tmp_path):
    import os

    from lift3d_core import checkpoints

    path = tmp_path / "weights.pth"
    path.write_bytes(b"one")
    builds = []

    def build(p):
        builds.append(p.read_bytes())
        return object()

    checkpoints.clear_model_cache()
    first = checkpoints.cached_model(path, ("cpu",), build)
    assert checkpoints.cached_model(path, ("cpu",), build) is first and builds == [b"one"]
    other = checkpoints.cached_model(path, ("cuda",), build)  # other options: another model
    assert other is not first and len(builds) == 2
    replacement = tmp_path / "new.pth"
    replacement.write_bytes(b"two")
    os.replace(replacement, path)  # the file replaced on disk: built again, the stale copy dropped
    again = checkpoints.cached_model(path, ("cpu",), build)
    assert again is not first and builds[-1] == b"two"
    assert sum(1 for k in checkpoints._MODELS if k[1] == ("cpu",)) == 1
    checkpoints.clear_model_cache()
