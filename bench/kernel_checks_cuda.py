"""CUDA checks of the fine step's Triton kernels against their PyTorch references.

The CPU tests run the same comparisons in Triton's interpreter, which cannot multiply bfloat16; this script runs them
on a GPU, the MLP also in bfloat16. Usage on a GPU machine: ``python3 bench/kernel_checks_cuda.py``; one line per
check, ``OK`` with its largest error or ``FAIL`` with the exception. Exit status 1 when any check fails.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import test_distortion as d
from tests import test_field_mlp_triton as p
from tests import test_field_triton as f
from tests import test_image_motion_triton as m


def _mlp(case, kw, bf16):
    err = p.compare("cuda", bf16=bf16, **kw)
    p._check(err, 5e-2 if bf16 else 1e-4)
    return f"{case} bf16={bf16} fused {max(err['fused'].values()):.2e} torch {max(err['torch'].values()):.2e}"


def _lines(rows, channels):
    err = f.compare_lines("cuda", rows=rows, channels=channels)
    f._check(err)
    return f"{rows}x{channels} {max(err.values()):.2e}"


def _field(case, kw):
    err = f.compare("cuda", **kw)
    f._check(err)
    return f"{case} {max(err.values()):.2e}"


def _regularisers():
    err = d.regulariser_errors("triton", device="cuda")
    assert max(err.values()) < 1e-5, err
    return f"{max(err.values()):.2e}"


def _image_motion():
    r = m.compare("cuda")
    m._check(r)
    return json.dumps(r)


def main() -> int:
    checks = [(f"mlp {c}", _mlp, (c, kw, bf16)) for c, kw in p.CASES.items() for bf16 in (False, True)]
    checks += [("lines", _lines, sizes) for sizes in ((8, 8), (5, 6))]
    checks += [(f"field {c}", _field, (c, kw)) for c, kw in f.CASES.items()]
    checks += [("regularisers", _regularisers, ()), ("image motion", _image_motion, ())]
    failed = 0
    for name, fn, args in checks:
        try:
            print(f"OK   {name}: {fn(*args)}", flush=True)
        except Exception as exc:  # every check reports, one failure does not hide the others
            failed += 1
            print(f"FAIL {name}: {repr(exc)[:300]}", flush=True)
    print(f"{len(checks) - failed} of {len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
