"""The iim wire protocol, shared by the guest agent and the host relay.

It depends on msgpack and the standard library only, so the guest agent can
import it without pulling in anything host-side.
"""

__version__ = "0.1.0"
