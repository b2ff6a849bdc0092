"""ingest: validate the input photograph and fit it to the generator's frame size."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from lift3d_core.image import ingest_image
from tasks.common import RunContext, StageResult, cached_stage


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(ctx: RunContext) -> StageResult:
    def compute():
        image = ingest_image(ctx.source, ctx.config("ingest"))
        return {"image": image}, {"source": ctx.source}

    return cached_stage(ctx, "ingest", compute)
