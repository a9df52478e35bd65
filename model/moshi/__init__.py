"""The Moshi family — Kyutai's Moshi, NVIDIA's PersonaPlex, Kyutai's Hibiki — served with the upstream ``moshi``
package as the model library: checkpoints in their published layout and batched streaming behind the engine's
``ServedModel`` interface (``served.py``). This module imports nothing of the upstream package."""

FRAME_MS = 80
"""One Mimi frame: 1920 samples at 24 kHz, the family's step."""
CHUNKS_MS = (80, 160, 240, 320, 400)
"""Chunk lengths an engine serving the family takes: whole frames within the engine's 80–400 ms."""
