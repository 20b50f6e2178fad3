"""One api process of several (--api-server-count, scale_out.py): the daemon's app on the
shared port, through the engine process the supervisor started.

Run as `python -m server.api.worker` with its ApiWorkerArgs as one JSON line on stdin.
"""

from __future__ import annotations

import sys

import msgspec

from server.api.scale_out import ApiWorkerArgs
from server.lifetime import exit_with_parent
from server.logging_setup import configure_logging


def main() -> int:
    args = msgspec.json.decode(sys.stdin.buffer.readline(), type=ApiWorkerArgs)
    # SIGTERM, as the supervisor would send: this process drains and stops if it dies
    exit_with_parent(parent_pid=args.supervisor_pid)
    api = args.config.api
    configure_logging(level=api.log_level, log_format=api.log_format, api_process=args.index)
    from server.api.app import create_app  # the web stack: after the settings are read
    from server.api.http_server import run_app, shared_port_socket

    app = create_app(args.config, attachment=args.attachment, metrics_dir=args.metrics_dir)
    return run_app(app, args.config, sockets=[shared_port_socket(api.host, api.port)])


if __name__ == "__main__":
    sys.exit(main())
