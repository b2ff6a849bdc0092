"""lift3d_core: the plain library behind lift3d (no Prefect, no MLflow).

Conventions (see ``camera.py``): images ``uint8 [H, W, 3]`` RGB; cameras OpenCV
(x right, y down, z forward), extrinsics camera-to-world ``c2w [N, 4, 4]``
float64, intrinsics ``K [N, 3, 3]`` in pixels of the stored frame size.
"""

from lift3d_core.errors import Lift3DError

__version__ = "0.1.0"

__all__ = ["Lift3DError", "__version__"]
