"""python -m service: run the app with uvicorn (one worker per device; see the README)."""

from __future__ import annotations

import argparse

import uvicorn
from uvicorn.config import LOG_LEVELS

from .settings import Settings


def settings_help() -> str:
    """Every setting's variable, default and description, from the Settings model: the help cannot go stale."""
    prefix = Settings.model_config["env_prefix"]
    lines = [f"Everything else is set by {prefix}* environment variables:"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else default
        lines += [f"  {prefix}{name.upper()}" + ("" if shown in (None, "") else f" (default: {shown})")]
        lines += [f"      {field.description}"]
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    uvicorn.run(
        "service.app:app",
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        workers=1,
        timeout_graceful_shutdown=30,
        timeout_keep_alive=30,  # longer than a client's or load balancer's reuse window: no resets under load
    )


if __name__ == "__main__":
    main()
