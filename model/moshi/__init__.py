"""The Moshi family — Kyutai's Moshi, NVIDIA's PersonaPlex, Kyutai's Hibiki — served with the upstream ``moshi``
package as the model library: checkpoints in their published layout (``checkpoint.py``) and batched streaming
behind the engine's ``ServedModel`` interface (``served.py``)."""
