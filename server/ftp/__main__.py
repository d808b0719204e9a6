"""`python -m server.ftp ROOT --ftp-port N ...`: the FTP service alone, for tests and tools.

Theory of operation: the same options the pageloan CLI adds, plus --host and a choice
of event loop (uvloop when installed, else asyncio).  Once listening it prints one
line, `ftp port N`, on stdout, so a parent process that asked for port 0 learns the
port; SIGTERM and SIGINT close the service cleanly (partial uploads are deleted).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from . import FtpConfig, add_ftp_arguments, ftp_config_from_args, start_ftp


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server.ftp",
                                     description="Serve ROOT over FTP (pageloan bulk mode).")
    parser.add_argument("root", type=Path, help="directory clients see as /")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop (uvloop falls back to asyncio if missing)")
    parser.add_argument("--log-level", default="INFO")
    # `pageloan serve` takes these from the static site's options; alone, FTP has its own.
    parser.add_argument("--show-dotfiles", action="store_true",
                        help="serve names starting with '.' (default: hidden and refused)")
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="let reads follow symlinks that lead out of the root")
    add_ftp_arguments(parser)
    return parser


async def _serve(config: FtpConfig) -> None:
    service = await start_ftp(config)
    print(f"ftp port {service.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await service.close()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.ftp_port is None:
        args.ftp_port = 0
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = ftp_config_from_args(args, args.root, show_dotfiles=args.show_dotfiles,
                                      follow_symlinks=args.follow_symlinks)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if args.loop == "uvloop":
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
    if config is None:                      # no --ftp-port: nothing to serve
        parser.error("--ftp-port is required")
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
