"""Stand-ins serve with the same loopback HTTP server as the product (see dualwrite.server)."""

from dualwrite.server import BackgroundServer, bind_socket, free_port, serve_forever

__all__ = ["BackgroundServer", "bind_socket", "free_port", "serve_forever"]
