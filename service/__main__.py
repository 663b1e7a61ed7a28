"""python -m service: run the app with uvicorn (one worker per device; see docs/settings.md)."""

from __future__ import annotations

import argparse
import errno
import functools
import resource
import socket
import sys

import uvicorn
from uvicorn.config import LOG_LEVELS

from .connections import LINGER_BYTES, ConnectionLimits, GuardedH11Protocol
from .request_id import configure_logging
from .settings import GROUPS, Settings, get_settings

# File handles kept free of connections: a quarter of the limit, at most this many. accept() can take half of
# them (the listen backlog) in one go before the cap is applied; the rest are the process's own files.
FD_RESERVE_MAX = 4096


def setting_rows() -> dict[str, list[tuple[str, str, str]]]:
    """Each setting's variable, shown default and description by group (settings.GROUPS), from the Settings
    model: what --help and the docs/settings.md's table say cannot go stale."""
    prefix = Settings.model_config["env_prefix"]
    rows: dict[str, list[tuple[str, str, str]]] = {}
    for group, names in GROUPS.items():
        for name in names:
            field = Settings.model_fields[name]
            default = field.get_default(call_default_factory=True)
            if isinstance(default, bool):
                default = str(default).lower()
            shown = ",".join(default) if isinstance(default, list) else "" if default is None else str(default)
            rows.setdefault(group, []).append((f"{prefix}{name.upper()}", shown, field.description or ""))
    return rows


def settings_help() -> str:
    prefix = Settings.model_config["env_prefix"]
    lines = [f"Everything else is set by {prefix}* environment variables:"]
    for group, rows in setting_rows().items():
        lines.append(f" {group}:")
        for variable, default, description in rows:
            lines += [f"  {variable}" + (f" (default: {default})" if default else ""), f"      {description}"]
    return "\n".join(lines)


def settings_table() -> str:
    """docs/settings.md's table of settings (`python -m service --settings-table` prints it)."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for group, rows in setting_rows().items():
        lines.append(f"| **{group}** | | |")
        lines += [f"| `{variable}` | {default or '-'} | {description} |" for variable, default, description in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the latent-cnf REST API (interactive docs at /docs) with uvicorn, one worker.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the epilog's one-variable-per-line layout
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default: %(default)s)")
    parser.add_argument(
        "--log-level", default="info", choices=list(LOG_LEVELS), help="uvicorn's log level (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=30,
        help="seconds in-flight requests get after SIGTERM; stop grace periods must be longer (default: %(default)s)",
    )
    parser.add_argument(
        "--settings-table", action="store_true", help="print the settings as a Markdown table, and exit"
    )
    return parser.parse_args(argv)


def connection_limits(settings: Settings) -> tuple[ConnectionLimits, int]:
    """The connection limits and the listen backlog, both kept inside the process's open-file limit."""
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    reserve = min(files // 4, FD_RESERVE_MAX)
    limits = ConnectionLimits(
        max_connections=settings.max_connections or files - reserve,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        send_timeout_s=settings.send_timeout_s,
        linger_bytes=max(LINGER_BYTES, 4 * settings.max_upload_bytes),  # the rest of a body over the upload limit
    )
    return limits, min(2048, reserve // 2)


def check_port_free(host: str, port: int) -> None:
    """Exit at once with a message if the address is taken, rather than after every model has loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is not in use
        try:
            probe.bind((host, port))
        except OSError as error:
            why = "is in use by another process" if error.errno == errno.EADDRINUSE else f"cannot be bound: {error}"
            sys.exit(f"{host}:{port} {why}: stop it, or choose another port (--port, or `make serve PORT=8001`)")


# How long a thread may hold the GIL before another that waits for it takes it (CPython's default is 5 ms). The
# event loop rarely lets go by itself under load, and the server's other threads (a large answer's encoding, the
# model calls with LATENT_CNF_MODEL_PROCESS=false) need it for moments between waits: 0.5 ms measured 18 % more
# /generate n=1 requests/s at concurrency 32 when an inference thread still talked to the model process
# (681 -> 804 on 2 cores, docs/benchmarks.md).
SWITCH_INTERVAL_S = 0.0005


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.settings_table:
        print(settings_table())
        return
    check_port_free(args.host, args.port)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    settings = get_settings()
    configure_logging(settings.log_format, settings.access_log)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{'127.0.0.1' if args.host == '0.0.0.0' else shown}:{args.port}"
    print(f"latent-cnf: loading models; then the page is at {url}/ and the API docs at {url}/docs", flush=True)
    limits, backlog = connection_limits(settings)
    uvicorn.run(
        "service.app:app",
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=settings.access_log,
        log_config=None,  # ours, set just above: every line in one format, with request IDs
        workers=1,
        # The ignore: uvicorn annotates a protocol class, and only ever calls it, as it can this partial of one
        http=functools.partial(GuardedH11Protocol, limits=limits),  # type: ignore[arg-type]
        backlog=backlog,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        # Longer than a client's or load balancer's reuse window (no resets under load); idle connections
        # still make room for new ones at the connection cap. The ignore: uvicorn annotates an int, but the value
        # only reaches loop.call_later, which takes float seconds.
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
