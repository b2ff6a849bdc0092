"""generate: render the camera tree's clips from the input image (the GPU-heavy stage).

Resume: every finished clip is stored at once as a ``generate_clip`` artifact keyed by the stage's key and
the clip id (verified on read like any artifact), so a killed run restarts at the first unfinished clip; they are
deleted once the stage's own artifact is committed.
"""

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from lift3d_core import __version__
from lift3d_core.errors import Lift3DError
from lift3d_core.generate import generate as generate_video
from lift3d_core.store import artifact_key
from lift3d_core.trajectory import CameraTree
from tasks.common import RunContext, StageResult, cached_stage, stage_logger
from tasks.progress import stage_progress

CLIP_STAGE = "generate_clip"


def _clip_key(ctx: RunContext, clip_id: str) -> tuple[str, dict]:
    planned = ctx.plan["generate"]
    return artifact_key(CLIP_STAGE, planned.doc["stage_version"], {"clip_id": clip_id}, {"generate": planned.key}, {})


def _finished_clips(ctx: RunContext, tree: CameraTree) -> dict[str, np.ndarray]:
    store, log, done = ctx.store, stage_logger(), {}
    for clip in tree.clips:
        key, _ = _clip_key(ctx, clip.clip_id)
        if not store.exists(CLIP_STAGE, key):
            continue
        problems = store.verify_artifact(CLIP_STAGE, key, deep=False)
        if problems:
            log.warning(f"generate   clip {clip.clip_id} CORRUPT: {'; '.join(map(str, problems))}; regenerating it")
            store.quarantine(CLIP_STAGE, key)
            continue
        done[clip.clip_id] = store.read(CLIP_STAGE, key).array("frames")
    if done:
        log.info(f"generate   resuming: {len(done)} of {len(tree.clips)} clips already generated")
    return done


def _check_models(ctx: RunContext) -> None:
    cfg, planned = ctx.config("generate"), ctx.plan["generate"].doc["models"]
    if cfg.models() != planned:  # the checkpoint was replaced between planning and running
        raise Lift3DError(f"generate: checkpoint digest changed since the run was planned ({planned} -> "
                          f"{cfg.models()}); run again")


@task(name="generate", cache_policy=NO_CACHE)
def generate(ctx: RunContext) -> StageResult:
    tree = CameraTree.from_dict(ctx.read("trajectory").attrs["tree"])

    def compute():
        _check_models(ctx)
        image = ctx.read("ingest").array("image")
        store = ctx.store

        def on_clip(clip_id: str, frames: np.ndarray) -> None:
            key, doc = _clip_key(ctx, clip_id)
            store.write(CLIP_STAGE, key, doc, {"frames": frames}, {"clip_id": clip_id}, code_version=__version__)

        with stage_progress("generate", tree.num_distinct_frames) as advance:
            video = generate_video(image, tree, ctx.config("generate"), progress=advance,
                                   done=_finished_clips(ctx, tree), on_clip=on_clip)
        arrays = {"frames": video.frames, "K": video.K, "c2w": np.stack([c.c2w for c in tree.clips])}
        if video.depth_hint is not None:
            arrays["depth_hint"] = video.depth_hint
        arrays.update({f"ground_truth/{k}": v for k, v in video.ground_truth.items()})
        return arrays, {"clip_ids": [c.clip_id for c in tree.clips], "tree": tree.to_dict()}

    result = cached_stage(ctx, "generate", compute)
    _drop_clips(ctx, tree)
    return result


def _drop_clips(ctx: RunContext, tree: CameraTree) -> None:
    """The per-clip artifacts only serve a resume: once the stage's artifact is committed they are deleted, so the
    frames are not stored (and pushed to a team remote) twice."""
    dropped = sum(ctx.store.delete(CLIP_STAGE, _clip_key(ctx, c.clip_id)[0]) for c in tree.clips)
    if dropped:
        stage_logger().info(f"generate   {dropped} per-clip resume artifacts removed (the stage's artifact holds them)")
