"""`fl-sim serve`: the read-only web view of the runs folder (fl_sim/web)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import typer

from fl_sim.cli.common import RUNS_DIR, err, out
from fl_sim.core.errors import FlSimError



def exposed(host: str) -> bool:
    """Whether listening on ``host`` may be reachable from another machine (anything but a loopback address)."""
    import ipaddress

    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: it may resolve to anything


def serve(runs_dir: Path = RUNS_DIR, host: str = typer.Option("127.0.0.1", "--host", help="address to bind"),
          port: int = typer.Option(8765, "--port", help="TCP port")) -> None:
    """Browse the runs: every attacked round per user, live while a run goes (read-only; Ctrl-C stops it)."""
    import uvicorn

    from fl_sim.web.app import create_app

    if not runs_dir.is_dir():
        raise FlSimError(f"--runs-dir {runs_dir}: no such folder (make demo or fl-sim run makes one)")
    if not 1 <= port <= 65535:
        raise FlSimError(f"--port {port}: not a TCP port (1-65535)")
    try:  # a taken port or an unknown host is one line here, not uvicorn's log and exit code 1
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except socket.gaierror:
        raise FlSimError(f"--host {host}: not an address of this machine") from None
    except OSError as exc:
        why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise FlSimError(f"--host {host} --port {port}: cannot listen there ({why})") from None
    if exposed(host):
        err.print(f"fl-sim serve: warning: listening on {host}, not the loopback: anyone who can reach this "
                  "address can read every run (photos included)", markup=False, highlight=False)
    shown = f"[{host}]" if ":" in host else host
    out.print(f"fl-sim serve: http://{shown}:{port}/  (runs in {runs_dir}; read-only; Ctrl-C stops)",
              markup=False, highlight=False)
    uvicorn.run(create_app(runs_dir.resolve()), host=host, port=port, log_level="warning", access_log=False)


def register(app: typer.Typer) -> None:
    """Add serve to the fl-sim app."""
    app.command()(serve)
