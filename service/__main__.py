"""python -m service: run the app with uvicorn (one worker per device; see the README)."""

from __future__ import annotations

import argparse

import uvicorn


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
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
