"""One Prefect task per stage: read upstream artifacts, call lift3d_core, write the artifact, report to MLflow."""
