"""``depth.backend: depth_anything_v2``: Depth Anything V2 (ViT-L) relative disparity, aligned to calibration.

:mod:`.model` builds the network (transformers' Depth Anything from a V2 config), :mod:`.convert` maps the official
checkpoint's names onto it, :mod:`.backend` loads it once per process, runs it and aligns its output.
"""

from lift3d_core.depth.depth_anything_v2.backend import (
    align_to_calibration,
    estimate,
    load_model,
    load_weights,
    network_size,
    read_checkpoint,
    relative_disparity,
)
from lift3d_core.depth.depth_anything_v2.convert import (
    attention_naming,
    convert_state_dict,
    hf_names,
    official_shapes,
    to_official,
)
from lift3d_core.depth.depth_anything_v2.model import ARCHITECTURES, Architecture, build_model, hf_config

__all__ = [
    "ARCHITECTURES", "Architecture", "align_to_calibration", "attention_naming", "build_model", "convert_state_dict",
    "estimate", "hf_config", "hf_names", "load_model", "load_weights", "network_size", "official_shapes",
    "read_checkpoint", "relative_disparity", "to_official",
]
