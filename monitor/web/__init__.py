"""The HTTP endpoint of `monitor run`: /healthz, /readyz, /metrics, /status.

`server` is the HTTP plumbing (asyncio streams and h11, connections bounded in number, size
and time); `site` is what it serves (readiness checks, the metrics text, the status JSON) for
whichever daemon runs now.
"""

from monitor.web.server import Response, WebServer, address_argument, parse_address
from monitor.web.site import ENDPOINTS, Check, Site

__all__ = [
    "ENDPOINTS",
    "Check",
    "Response",
    "Site",
    "WebServer",
    "address_argument",
    "parse_address",
]
