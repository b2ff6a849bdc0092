"""The ``demo`` flow: the synthetic scene from a bundled photograph, evaluated against ground truth.

It is the ``lift`` flow with a CPU-sized profile layered over ``params.yaml``
(printed in the log), so ``make demo`` finishes in minutes on two cores. The
profile shows the method: the synthetic frames carry the default per-frame
distortion, and distortion-aware 3DGS trains the canonical Gaussians that the
summary scores on held-out views of the *undistorted* scene
(``--set train.distortion=false`` trains plain 3DGS on the same frames).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.lift import lift_body
from flows.settings import DEMO_OVERRIDES, DEMO_SOURCE  # noqa: F401 (defined where the CLI reads them without Prefect)


@flow(name="demo", log_prints=True, validate_parameters=False)
def demo(params: dict, run_name: str, store_url: str, state_dir: str, runs_dir: str, source: str = DEMO_SOURCE,
         track: bool = True) -> dict[str, Any]:
    """Lift the demo photograph with the synthetic generator; the summary holds held-out PSNR/SSIM."""
    return lift_body(source, params, run_name, store_url, state_dir, runs_dir, track)
