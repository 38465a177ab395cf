"""A unix-socket relay that holds every request back a fixed time: the slow-mirror fault.

    python -m registry_mirror.platforms.local.slow_relay <listen socket> <target socket> <seconds>

Each chunk a client sends waits `seconds` before it goes on to the target, so every request (not
only each connection: nginx keeps upstream connections alive) is late by that much.
"""
from __future__ import annotations

import asyncio
import os
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while chunk := await reader.read(65536):
            if delay:
                await asyncio.sleep(delay)  # the fault itself: the request waits
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _serve(listen: str, target: str, delay: float) -> None:
    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer, delay),
                             _pipe(upstream_reader, client_writer, 0.0))

    if os.path.exists(listen):
        os.unlink(listen)
    server = await asyncio.start_unix_server(relay, path=listen)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(_serve(argv[0], argv[1], float(argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
