"""``lift3d view``: a local web viewer of canonical Gaussians, the calibrated cameras of the generated frames and
the distortion field (issue 24).

``scene`` holds what is shown, ``splats`` the Gaussians' wire format, ``server`` the standard-library HTTP server,
``static/`` the page and its WebGL2 splat renderer (the project's own code: nothing is fetched from elsewhere).
"""

from lift3d_core.viewer.scene import FrameCamera, ViewerScene, scene_from_ply
from lift3d_core.viewer.server import ViewerServer
from lift3d_core.viewer.splats import pack_splats, splat_arrays, unpack_splats

__all__ = ["FrameCamera", "ViewerScene", "ViewerServer", "pack_splats", "scene_from_ply", "splat_arrays",
           "unpack_splats"]
