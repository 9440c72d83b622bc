"""iim-agent: watches processes inside a guest and reports them to the host.

The agent writes framed iim messages (see :mod:`iim_protocol`) to a
virtio-serial port or a serial tty.  It depends on the standard library,
psutil, pyserial, msgpack, click and PyYAML only, so it runs from a stock cloud
image's Python (3.9 and later).
"""

from iim_protocol import __version__

__all__ = ["__version__"]
