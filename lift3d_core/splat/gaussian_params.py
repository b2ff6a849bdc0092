"""The trainer's trainable Gaussians and the scene scale its learning rates and densification follow.

* :class:`GaussianParams`: ``dict[str, nn.Parameter]`` keyed like :class:`~lift3d_core.splat.gaussians.Gaussians`
  fields <-> ``Gaussians`` (``means [N, 3]``, ``shN [N, K - 1, 3]``, ...).
* :func:`scene_extent_from_cameras`: 3DGS's ``cameras_extent`` of ``[F, 4, 4]`` camera-to-world poses.
* :func:`_match_sh_degree`: initial Gaussians zero-padded to the SH degree training runs at.
"""

from __future__ import annotations

import numpy as np
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import Gaussians, num_sh_bases


class GaussianParams(dict):
    """The trainable Gaussians: ``dict[str, torch.nn.Parameter]`` keyed by :class:`Gaussians` field names.

    Densification replaces entries (new Parameter objects), so always read ``params[name]`` afresh.
    """

    @classmethod
    def from_gaussians(cls, gaussians: Gaussians) -> GaussianParams:
        return cls({k: torch.nn.Parameter(v.detach().clone().float()) for k, v in gaussians.tensors().items()})

    def gaussians(self, sh_degree: int | None = None) -> Gaussians:
        """The current Gaussians, differentiable w.r.t. the Parameters.

        ``sh_degree``: keep only the SH bands up to this degree (None: all). Bands a render does not use then get
        no gradient, and at degree 0 ``shN`` (3/4 of the parameters at degree 3) none at all, so Adam skips it.
        """
        tensors = {k: self[k] for k in Gaussians.field_names()}
        if sh_degree is not None:
            keep = num_sh_bases(sh_degree) - 1
            if keep < tensors["shN"].shape[1]:
                shN = tensors["shN"]
                tensors["shN"] = shN[:, :keep] if keep > 0 else shN.detach()[:, :0]
        return Gaussians(**tensors)

    def detached(self) -> Gaussians:
        """A CPU copy without autograd history."""
        return Gaussians(**{k: self[k].detach().cpu().clone() for k in Gaussians.field_names()})

    @property
    def num(self) -> int:
        return int(self["means"].shape[0])


def scene_extent_from_cameras(c2w: np.ndarray | torch.Tensor, means: torch.Tensor | None = None) -> float:
    """3DGS ``cameras_extent``: 1.1 x the largest distance of a camera centre from their mean.

    When the cameras (nearly) coincide, as for one view, that is 0; then the extent falls back to the median
    distance of the Gaussians from the camera centre (the depth scale of the scene), or 1.0 without Gaussians.
    """
    centres = torch.as_tensor(c2w, dtype=torch.float64)[:, :3, 3].cpu()
    spread = 1.1 * float((centres - centres.mean(dim=0)).norm(dim=-1).max())
    if means is None or means.shape[0] == 0:
        return spread if spread > 0.0 else 1.0
    depth_scale = float((means.detach().cpu().double() - centres.mean(dim=0)).norm(dim=-1).median())
    # "Nearly coincide": a camera spread below a thousandth of the scene depth.
    if spread > 1e-3 * depth_scale:
        return spread
    return depth_scale if depth_scale > 0.0 else 1.0


def _match_sh_degree(gaussians: Gaussians, degree: int) -> Gaussians:
    if gaussians.sh_degree > degree:
        raise Lift3DError(
            f"initial Gaussians have SH degree {gaussians.sh_degree} > train sh_degree {degree}; "
            "raise train.sh_degree or initialise with a lower degree"
        )
    missing = num_sh_bases(degree) - 1 - gaussians.shN.shape[1]
    if missing == 0:
        return gaussians
    pad = gaussians.shN.new_zeros(gaussians.num, missing, 3)
    return Gaussians(**{**gaussians.tensors(), "shN": torch.cat([gaussians.shN, pad], dim=1)})
