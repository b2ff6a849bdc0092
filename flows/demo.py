"""The ``demo`` flow: the synthetic scene from a bundled photograph, evaluated against ground truth.

It is the ``lift`` flow with a CPU-sized profile layered over ``params.yaml``
(printed in the log), so ``make demo`` finishes in minutes on two cores.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.lift import lift_body

DEMO_SOURCE = "skimage:astronaut"
# CPU profile: the generator's frame size and a training budget a laptop finishes in ~2 minutes.
DEMO_OVERRIDES = (
    "generate.backend=synthetic",
    "ingest.width=128",
    "ingest.height=96",
)


@flow(name="demo", log_prints=True, validate_parameters=False)
def demo(params: dict, run_name: str, store_url: str, state_dir: str, runs_dir: str, source: str = DEMO_SOURCE,
         track: bool = True) -> dict[str, Any]:
    """Lift the demo photograph with the synthetic generator; the summary holds held-out PSNR/SSIM."""
    return lift_body(source, params, run_name, store_url, state_dir, runs_dir, track)
