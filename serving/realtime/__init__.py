"""The OpenAI-Realtime-compatible WebSocket endpoint of the gateway (docs/realtime.md).

One job per module: ``protocol`` (event shapes, session settings, client-event checks), ``audio`` (24 kHz wire
audio ↔ the model's rate, streaming soxr), ``secrets`` (short-lived client secrets for pages), ``session``
(one WebSocket = one ``Converse`` session through the gateway's admission and routing), ``app`` (the aiohttp
application: the endpoint, client secrets, config and the page), ``metrics``.
"""
