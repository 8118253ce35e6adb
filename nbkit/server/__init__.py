"""``nbkit serve``: an OpenAI-compatible HTTP server that speaks OpenVINO Model Server's API.

The same client code talks to it on a laptop and to OVMS in production; only the URL changes.
See :func:`nbkit.serve` (:func:`nbkit.server.server.serve`) (Python) and ``nbkit serve --help`` (command line).
"""

from __future__ import annotations

from nbkit.server.options import ServeOptions
from nbkit.server.server import ServerHandle, serve

__all__ = ["ServeOptions", "ServerHandle", "serve"]
