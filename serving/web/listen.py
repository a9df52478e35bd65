"""Start an aiohttp application on one address: the engine's Realtime WebSocket and the session picker's HTTP
app both listen through it."""

from __future__ import annotations

from aiohttp import web


async def listen(app: web.Application, host: str, port: int, who: str) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host``:``port`` (0 = any free port): its runner and the bound port. OSError naming
    ``who`` and the address when the port cannot be bound (nothing is left running then)."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=False).start()
    except OSError as e:
        await runner.cleanup()
        raise OSError(f"{who}: cannot bind http_port {host}:{port}: {e.strerror or e}") from None
    bound = runner.addresses[0][1]
    assert isinstance(bound, int)
    return runner, bound
