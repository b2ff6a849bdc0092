"""The one error type users see.

Raise :class:`Lift3DError` at a boundary (input image, params, checkpoint,
store) with a message a user can act on; the CLI prints it on one line and
exits non-zero. Inside the core, trust your types and let bugs be bugs.
"""


class Lift3DError(Exception):
    """A user-actionable failure: bad input, bad params, missing checkpoint, corrupt artifact."""
