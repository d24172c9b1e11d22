"""The one exception type users see from this pack."""


class IPAdapterError(ValueError):
    """A problem the user can fix; the message always says how.

    Subclassing ValueError keeps ComfyUI's executor treating it as a node input error
    (shown on the node, server keeps serving) rather than an internal crash.
    """
