"""The OpenAI-Realtime-compatible WebSocket endpoint, served by each engine behind Envoy (docs/realtime.md).

One job per module: ``endpoint`` (the aiohttp application on the engine's loop), ``session`` (one WebSocket =
one conversation on the engine's own session path, an explicit lifecycle: ``lifecycle``), ``translate``
(server events → Realtime events), ``uplink`` (the client's audio → chunks), ``host`` (what a session needs
of the engine), ``protocol`` (event shapes, session settings, client-event checks), ``events`` (the
client-event decoder), ``audio`` (24 kHz wire audio ↔ the model's rate, streaming soxr), ``client_secrets``
(short-lived client secrets for pages, minted by the session picker), ``credentials`` (what an upgrade
carries besides events), ``metrics``.
"""
