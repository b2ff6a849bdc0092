"""3D Gaussian splatting: the Gaussian model, rasterizers, PLY, densification, trainers."""
