"""A platform in a process of its own, for the benchmarks: `python bench/platform_server.py DATA_DIR`.

It runs harness.platform.Platform on free ports (bind to 0) and writes platform.json into the
data dir once it serves. It stops when its standard input reaches end of file (the benchmark
closes it, or dies), on SIGTERM/SIGINT, or after --max-seconds, whichever comes first, so it
never outlives the benchmark that started it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from pathlib import Path

from harness.broker.tuning import tune_process
from harness.platform.process import Platform, PlatformConfig


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set `stop` when stdin closes (the parent closed the pipe or exited)."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    loop.call_soon_threadsafe(stop.set)


async def serve(data_dir: Path, max_seconds: float, profile_out: str | None) -> None:
    platform = Platform(PlatformConfig(data_dir=data_dir, http_port=0, mqtts_port=0, repo_port=0))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    threading.Thread(target=_watch_stdin, args=(loop, stop), daemon=True, name="stdin-watch").start()
    profiler = None
    if profile_out:
        import cProfile

        profiler = cProfile.Profile()
    await platform.start()
    if profiler is not None:
        profiler.enable()
    try:
        await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    except TimeoutError:
        print(f"platform_server: stopping after --max-seconds {max_seconds:.0f}", file=sys.stderr)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_out)
        try:
            await asyncio.wait_for(platform.stop(), timeout=30)
        except TimeoutError:
            print("platform_server: platform did not stop within 30 s", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--max-seconds", type=float, default=3600.0,
                        help="stop by itself after this long (default 3600)")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the platform's loop thread into FILE")
    args = parser.parse_args()
    tune_process()
    logging.basicConfig(level=logging.WARNING, format="platform: %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.data_dir, args.max_seconds, args.profile))


if __name__ == "__main__":
    main()
