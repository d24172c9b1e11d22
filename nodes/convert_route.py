"""The server route behind the web UI's "convert ComfyUI_IPAdapter_plus nodes" command (web/js/convert_leading_ipadapter.js).

POST /exact_ipadapter/convert with {"workflow": <the open graph>} answers {"workflow", "report", "lines"}:
the same conversion as `python -m ipadapter_core.convert`, done where the pack's code is.
"""

from __future__ import annotations

import logging
import sys

from ..ipadapter_core.convert import convert_workflow
from ..ipadapter_core.errors import IPAdapterError

ROUTE = "/exact_ipadapter/convert"


def register_routes() -> None:
    """Add the route when ComfyUI's server is running (it exists before custom nodes load); in-process imports skip it."""
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None:
        return
    from aiohttp import web

    @instance.routes.post(ROUTE)
    async def convert(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            converted, report = convert_workflow(body.get("workflow") if isinstance(body, dict) else None)
        except (ValueError, IPAdapterError) as error:  # a body that is not JSON raises a ValueError
            return web.json_response({"error": str(error)}, status=400)
        logging.info("IP-Adapter: converted a ComfyUI_IPAdapter_plus workflow (%d nodes, %d left)", len(report.converted), len(report.unconvertible))
        return web.json_response({"workflow": converted, "report": report.to_json(), "lines": report.lines()})
