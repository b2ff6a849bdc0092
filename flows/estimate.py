"""Cost up front: before a lift starts, what each stage that will run (not already cached) is and how long it
should take on this device (:mod:`lift3d_core.cost`), and the named parameter profiles (``--profile``)."""

from __future__ import annotations

from rich.console import Console

from flows.settings import DEMO_OVERRIDES

# --profile NAME: overrides layered over params.yaml (before any --set). cpu: the demo's CPU-sized profile.
PROFILES: dict[str, tuple[str, ...]] = {"cpu": DEMO_OVERRIDES}
LONG_RUN_S = 15 * 60  # past this on a CPU, the estimate suggests --profile cpu


def profile_overrides(name: str | None) -> tuple[str, ...]:
    from lift3d_core.errors import Lift3DError

    if name is None:
        return ()
    if name not in PROFILES:
        raise Lift3DError(f"unknown profile {name!r}; profiles: {', '.join(PROFILES)}")
    return PROFILES[name]


def estimate_lines(params: dict, source: str, store_url: str, device: str | None = None) -> list[str]:
    """The lines printed before a run: one per stage that will compute, with its estimate, and the total."""
    import torch

    from lift3d_core.cost import estimate_run, format_seconds, total_seconds
    from lift3d_core.pipeline import plan
    from lift3d_core.store import ArtifactStore

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    planned = plan(params, source)
    store = ArtifactStore(store_url)
    todo = tuple(name for name, p in planned.items() if not store.exists(name, p.key))
    configs = {name: p.config for name, p in planned.items()}
    estimates = estimate_run(configs, device, todo)
    where = f"this GPU ({torch.cuda.get_device_name()})" if device == "cuda" else "this CPU"
    if not estimates:
        return [f"every costly stage is cached; nothing long to run on {where}"]
    total = total_seconds(estimates)
    lines = [f"will run on {where}, about {format_seconds(total)} in all (rates: bench/RESULTS.md):"]
    lines += [f"  {e.line()}" for e in estimates]
    if device == "cpu" and (total is None or total > LONG_RUN_S):
        from lift3d_core.config import apply_overrides
        from lift3d_core.pipeline import stage_configs

        small = stage_configs(apply_overrides(params, list(PROFILES["cpu"])))
        size = f"{small['ingest'].width}x{small['ingest'].height}"
        lines.append(f"  on a CPU this is long: `--profile cpu` (the demo's CPU-sized profile, {size} frames) "
                     f"takes about {format_seconds(total_seconds(estimate_run(small, device)))} here")
    return lines


def print_estimate(console: Console, params: dict, source: str, store_url: str) -> None:
    for line in estimate_lines(params, source, store_url):
        console.print(line, highlight=False)
