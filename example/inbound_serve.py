#!/usr/bin/env python
"""Serve the mirror project on 127.0.0.1 over HTTP, quietly: no dev-server banner, no access log.

Usage: ``python example/inbound_serve.py [PORT]``. Without a port (or with 0) it takes
any free one. The first line it prints is ``listening on http://127.0.0.1:PORT/``.
"""

import os
import sys
from pathlib import Path

root = Path(__file__).resolve().parent
sys.path[:0] = [str(root), str(root.parent / "src")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inbound_site.settings")

from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler  # noqa: E402


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    from inbound_site.wsgi import application

    server = ThreadedWSGIServer(("127.0.0.1", port), WSGIRequestHandler)
    server.set_app(application)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
