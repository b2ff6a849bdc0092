"""A field rebuilt from its stored state (:meth:`DistortionField.state`)."""

from __future__ import annotations

import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.distortion.config import DistortionFieldConfig
from lift3d_core.splat.distortion.field import DistortionField


def load_field(field_state: dict, device: torch.device | str = "cpu") -> DistortionField:
    """Rebuild a :class:`DistortionField` from :meth:`DistortionField.state` (exact round trip)."""
    try:
        cfg = DistortionFieldConfig.from_dict(field_state["config"])
    except (KeyError, TypeError) as exc:
        raise Lift3DError(f"not a distortion field state (needs 'config' and 'state_dict'): {exc}") from exc
    field = DistortionField(cfg)
    field.load_state_dict(field_state["state_dict"])
    return field.to(device)
