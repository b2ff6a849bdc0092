"""Flows that wire the stage tasks (one image, the demo), and the ``lift3d`` CLI."""
