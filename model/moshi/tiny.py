"""Tiny random Moshi-family checkpoints (``duplex model init``), for tests and demos: each family's published
layout (``layout.py``) with the LM and Mimi shrunk to run in milliseconds, the same seed writing the same bytes.

The Mimi listens (different audio → different codes → different decoded audio); the text tokenizer is a
SentencePiece model trained on generated text; PersonaPlex's voice prompts are recorded as NVIDIA's generator
records them. LM weights are written as published (``published_state_dict``): bf16, attention projections fused.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import random
import tarfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelError
from ..family import FamilyName
from .checkpoint import VoicePrompt
from .layout import (
    CONFIG_NAME,
    DEFAULT_MIMI_NAME,
    DEFAULT_MOSHI_NAME,
    DEFAULT_TOKENIZER_NAME,
    LOADER_KEYS,
    MOSHI_FAMILIES,
    PERSONAPLEX_VOICES,
    PUBLISHED_MIMI_BINS,
    PUBLISHED_MIMI_LEVELS,
    VOICES_DIR,
    VOICES_TGZ,
)
from .upstream import no_compile, upstream_loaders

SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920
"""One Mimi frame: 80 ms at 24 kHz (12.5 Hz)."""
PERSONAPLEX_PROMPT_TEXT_TOKEN = 3
"""Text token fed while a voice prompt plays (PersonaPlex's ``zero_text_code``: the padding id)."""


def init_checkpoint(family: FamilyName, out: Path, seed: int) -> Path:
    """Write a tiny random ``family`` checkpoint to ``out`` (created; must be empty) in that family's published
    layout, with a Mimi that listens; the same seed writes the same bytes. Returns ``out``."""
    if family not in MOSHI_FAMILIES:
        raise ModelError(f"unknown Moshi family {family!r}; choose one of {', '.join(MOSHI_FAMILIES)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out} exists and is not an empty directory")
    config = _tiny_config(family)
    loaders = upstream_loaders()
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), no_compile():
        torch.manual_seed(seed)
        mimi = _listening_mimi(_TINY_MIMI_CONFIG, seed)
        torch.manual_seed(seed + 1)
        lm_kwargs = {k: v for k, v in config.items() if k not in LOADER_KEYS}
        lm = loaders.get_moshi_lm(None, lm_kwargs=copy.deepcopy(lm_kwargs), device="cpu", dtype=torch.float32)
        lm_state = {k: v.to(torch.bfloat16) for k, v in published_state_dict(lm).items()}  # published: bf16
    (out / _TINY_MIMI_CONFIG_NAME).write_text(json.dumps(_TINY_MIMI_CONFIG, indent=2) + "\n")
    _save_safetensors(published_state_dict(mimi), out / config["mimi_name"])  # float32, as upstream keeps Mimi
    _save_safetensors(lm_state, out / config["moshi_name"])
    _train_tokenizer(out / config["tokenizer_name"], config["text_card"], seed, family)
    if family == "personaplex":
        _write_voices(out, lm.to(torch.bfloat16), mimi, seed)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out


def family_name(value: str) -> FamilyName:
    """``value`` as a Moshi family name, or ``ModelError`` listing the choices."""
    if value not in MOSHI_FAMILIES:
        raise ModelError(f"unknown Moshi family {value!r}; choose one of {', '.join(MOSHI_FAMILIES)}")
    return value


def published_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """``module``'s weights as Kyutai publishes them: each attention's per-step ``in_projs.{i}.weight`` and
    ``out_projs.{i}.weight`` fused into ``in_proj_weight`` and ``out_proj.weight`` (stacked on dim 0)."""
    state = {k: v.detach() for k, v in module.state_dict().items()}
    out: dict[str, Tensor] = {}
    fused: dict[str, list[tuple[int, Tensor]]] = {}
    for key, value in state.items():
        for part, target in ((".in_projs.", "in_proj_weight"), (".out_projs.", "out_proj.weight")):
            if part in key and key.endswith(".weight"):
                prefix, rest = key.split(part, 1)
                step = int(rest.split(".", 1)[0])
                fused.setdefault(f"{prefix}.{target}", []).append((step, value))
                break
        else:
            out[key] = value
    for key, parts in fused.items():
        out[key] = torch.cat([v for _, v in sorted(parts, key=lambda p: p[0])], dim=0)
    return {k: v.contiguous() for k, v in out.items()}


def _save_safetensors(state: dict[str, Tensor], path: Path) -> None:
    """Written as any other file (mode from the umask): safetensors' ``save_file`` makes the file readable by its
    owner only, and a checkpoint on a node's disk is read by the engine pods' user, not by whoever wrote it."""
    from safetensors.torch import save

    path.write_bytes(save({k: v.contiguous() for k, v in state.items()}))


# The tiny checkpoints: each family's published config.json keys, the LM and Mimi shrunk to run in milliseconds.
_TINY_MIMI_CONFIG: dict[str, Any] = {
    "sample_rate": SAMPLE_RATE,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        "channels": 1,
        "dimension": 32,
        "causal": True,
        "n_filters": 4,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": [8, 6, 5, 4],
        "true_skip": True,
    },
    "quantizer": {
        "dimension": 16,
        "n_q": PUBLISHED_MIMI_LEVELS,
        "bins": PUBLISHED_MIMI_BINS,
        "input_dimension": 32,
        "output_dimension": 32,
    },
    "transformer": {
        "d_model": 32,
        "num_heads": 2,
        "num_layers": 1,
        "causal": True,
        "layer_scale": 0.01,
        "context": 250,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": 64,
        "input_dimension": 32,
        "output_dimensions": [32],
    },
}
_TINY_MIMI_CONFIG_NAME = "mimi_config.json"
_LM_GEN_CONFIG = {"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25}
"""Upstream LMGen's sampling defaults."""


def _tiny_lm(
    *, text_card: int, n_q: int, dep_q: int, delays: list[int], context: int, max_period: int, dep_context: int
) -> dict[str, Any]:
    """Moshi's LM arguments (upstream ``loaders._lm_kwargs`` keys, in its order), shrunk."""
    return {
        "dim": 64,
        "text_card": text_card,
        "existing_text_padding_id": 3,
        "n_q": n_q,
        "dep_q": dep_q,
        "card": PUBLISHED_MIMI_BINS,
        "num_heads": 4,
        "num_layers": 2,
        "hidden_scale": 4.125,
        "causal": True,
        "layer_scale": None,
        "context": context,
        "max_period": max_period,
        "gating": "silu",
        "norm": "rms_norm_f32",
        "positional_embedding": "rope",
        "depformer_dim": 32,
        "depformer_dim_feedforward": int(4.125 * 32),
        "depformer_num_heads": 2,
        "depformer_num_layers": 2,
        "depformer_causal": True,
        "depformer_layer_scale": None,
        "depformer_multi_linear": True,
        "depformer_context": dep_context,
        "depformer_max_period": 10000,
        "depformer_gating": "silu",
        "depformer_pos_emb": "none",
        "depformer_weights_per_step": True,
        "delays": delays,
    }


def _tiny_config(family: FamilyName) -> dict[str, Any]:
    moshi_delays = [0] + ([0] + [1] * 7) * 2
    if family == "moshi":
        lm = _tiny_lm(
            text_card=128, n_q=16, dep_q=8, delays=moshi_delays, context=3000, max_period=10000, dep_context=8
        )
        return {
            "model_type": "moshi",
            **lm,
            "moshi_name": DEFAULT_MOSHI_NAME,
            "mimi_name": DEFAULT_MIMI_NAME,
            "mimi_config_name": _TINY_MIMI_CONFIG_NAME,
            "tokenizer_name": DEFAULT_TOKENIZER_NAME,
            "lm_gen_config": dict(_LM_GEN_CONFIG),
        }
    if family == "personaplex":
        # NVIDIA's loader: Moshi's arguments with dep_q = 16 (the depformer writes both streams), context 8 kept
        lm = _tiny_lm(
            text_card=128, n_q=16, dep_q=16, delays=moshi_delays, context=3000, max_period=10000, dep_context=8
        )
        return {
            **lm,
            "moshi_name": DEFAULT_MOSHI_NAME,
            "mimi_name": DEFAULT_MIMI_NAME,
            "mimi_config_name": _TINY_MIMI_CONFIG_NAME,
            "tokenizer_name": DEFAULT_TOKENIZER_NAME,
            "lm_gen_config": dict(_LM_GEN_CONFIG),
        }
    if family == "hibiki":
        # Kyutai's hibiki config.json: 16 source + 16 target codebooks, delay 2, 9 depformer weight slices,
        # low-rank depformer embeddings, the ``description`` LUT conditioner summed into the input (CFG)
        delays = [0] + ([0] + [2] * 15) * 2
        lm = _tiny_lm(text_card=160, n_q=32, dep_q=16, delays=delays, context=500, max_period=100000, dep_context=16)
        lm["depformer_dim_feedforward"] = 96
        del lm["delays"]
        return {
            "model_type": "hibiki",
            **lm,
            "depformer_weights_per_step_schedule": [*range(9), *([8] * 7)],
            "depformer_low_rank_embeddings": 8,
            "delays": delays,
            "conditioners": {
                "description": {
                    "type": "lut",
                    "lut": {
                        "n_bins": 31,
                        "dim": 16,
                        "tokenizer": "noop",
                        "possible_values": ["very_bad", "bad", "neutral", "good", "very_good"],
                    },
                }
            },
            "fuser": {"sum": ["description"]},
            "moshi_name": "hibikim-pytorch-dc2cf5a5@80.safetensors",
            "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
            "mimi_config_name": _TINY_MIMI_CONFIG_NAME,
            "tokenizer_name": "tokenizer_spm_48k_multi6_2.model",
            "lm_gen_config": dict(_LM_GEN_CONFIG),
        }
    raise ModelError(f"unknown Moshi family {family!r}; choose one of {', '.join(MOSHI_FAMILIES)}")


def probe_audio(rows: int, seconds: float, seed: int) -> Tensor:
    """Varied test audio (rows, samples) at 24 kHz in [-1, 1]: silence, quiet noise, harmonic tones with vibrato
    and syllable-like gating, chirps, noise bursts — row ``i`` is kind ``i % 6``."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    out = torch.zeros(rows, n, dtype=torch.float64)

    def rand(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(1, generator=g, dtype=torch.float64))

    for r in range(rows):
        kind = r % 6
        if kind == 0:
            continue  # silence
        if kind == 1:
            out[r] = 0.01 * torch.randn(n, generator=g, dtype=torch.float64)
        elif kind in (2, 3):  # voiced, syllables
            f0 = rand(90, 140) if kind == 2 else rand(170, 260)
            freq = f0 * (1 + 0.05 * torch.sin(2 * torch.pi * rand(4, 7) * t))
            phase = 2 * torch.pi * torch.cumsum(freq, 0) / SAMPLE_RATE
            voiced = sum((0.5 / h) * torch.sin(h * phase) for h in range(1, 6))
            envelope = torch.sin(torch.pi * rand(2.5, 4.5) * t).abs() ** 2
            out[r] = 0.6 * voiced * envelope + 0.02 * torch.randn(n, generator=g, dtype=torch.float64)
        elif kind == 4:  # chirp
            f_lo, f_hi = rand(100, 400), rand(1000, 4000)
            freq = f_lo + (f_hi - f_lo) * t / seconds
            out[r] = 0.4 * torch.sin(2 * torch.pi * torch.cumsum(freq, 0) / SAMPLE_RATE)
        else:  # noise bursts
            gate = (torch.rand(n // FRAME_SAMPLES + 1, generator=g) > 0.5).double()
            gate = gate.repeat_interleave(FRAME_SAMPLES)[:n]
            out[r] = 0.3 * torch.randn(n, generator=g, dtype=torch.float64) * gate
    return out.clamp(-1, 1).float()


def _nearest(vectors: Tensor, book: Tensor) -> Tensor:
    return torch.cdist(vectors, book).argmin(dim=1)


_RUNTIME_LEVELS = 8
"""Codebooks a Moshi stream uses: the listening Mimi's output projections are fitted for these."""


@torch.no_grad()
def _listening_mimi(mimi_config: dict[str, Any], seed: int) -> Any:
    """A random Mimi (upstream ``MimiModel``, 8 codebooks) that listens.

    A random Mimi maps every input to the same codes and decodes any code to its biases' pattern. Here each
    residual level's codebook is drawn from the encoder's latents (and their residuals) of varied audio, the
    convolutions' biases are zeroed (silence → zero latent → silence), the quantizer's output projections are
    fitted (least squares) to map the quantized latents back to the encoder's latents, and the last convolution is
    scaled to a speech-like level."""
    loaders = upstream_loaders()
    g = torch.Generator().manual_seed(seed)
    mimi = loaders.get_mimi(None, copy.deepcopy(mimi_config))
    for m in mimi.modules():  # no biases: silence encodes to a zero latent and a zero latent decodes to silence
        if isinstance(m, nn.Conv1d | nn.ConvTranspose1d) and m.bias is not None:
            m.bias.zero_()
    audio = probe_audio(12, 4.0, seed)[:, None]
    cloud = _latent_cloud(mimi, audio, g)
    state = {k: v.detach().clone() for k, v in mimi.state_dict().items()}
    quantized = _draw_codebooks(mimi.quantizer, cloud, state, g)
    _fit_output_projections(mimi.quantizer, quantized, cloud, state)
    listening = loaders.get_mimi(None, copy.deepcopy(mimi_config), num_codebooks=_RUNTIME_LEVELS)
    listening.load_state_dict(state)
    # speech-like output level: the decoder is linear in its last convolution now that its biases are zero
    last = [m for m in listening.decoder.modules() if isinstance(m, nn.Conv1d)][-1]
    speech = audio[2:4]
    rms = listening.decode(listening.encode(speech)).pow(2).mean().sqrt()
    last.weight.mul_(0.08 / rms.clamp(min=1e-8))
    return listening


def _latent_cloud(mimi: Any, audio: Tensor, g: torch.Generator) -> Tensor:
    """(points, D): a continuous cloud around the encoder's latents of ``audio`` (more points than codes, so no
    level memorises its data and the residuals shrink level by level): each point a probe latent moved part way
    towards another, plus noise."""
    latent = mimi.encode_to_latent(audio, quantize=False)  # (B, D, T) at 12.5 Hz
    frames = latent.transpose(1, 2).reshape(-1, latent.shape[1])
    n = 8 * frames.shape[0]
    i, j = torch.randint(frames.shape[0], (2, n), generator=g)
    cloud = frames[i] + 0.5 * torch.rand(n, 1, generator=g) * (frames[j] - frames[i])
    return cloud + 0.1 * frames.std(dim=0) * torch.randn(n, frames.shape[1], generator=g)


def _draw_codebooks(q: Any, cloud: Tensor, state: dict[str, Tensor], g: torch.Generator) -> list[Tensor]:
    """Each residual level's codebook drawn from the cloud's residuals at that level, written into ``state``;
    returns, for ``rvq_first`` and ``rvq_rest``, the sum of the codes the runtime levels pick for each point."""
    bins = q.rvq_first.bins
    quantized: list[Tensor] = []
    for name, rvq, used in (("rvq_first", q.rvq_first, 1), ("rvq_rest", q.rvq_rest, _RUNTIME_LEVELS - 1)):
        residual = cloud @ rvq.input_proj.weight[:, :, 0].T
        total = torch.zeros_like(residual)
        for level in range(rvq.max_n_q):
            # data points moved by noise of their own spread: no point sits on a code, so residuals shrink
            # gradually (as with a trained RVQ) instead of vanishing for the sampled points
            pick = torch.randperm(residual.shape[0], generator=g)[:bins]
            book = residual[pick] + 0.5 * residual.std(dim=0) * torch.randn(bins, residual.shape[1], generator=g)
            prefix = f"quantizer.{name}.vq.layers.{level}._codebook."
            state[prefix + "embedding_sum"] = book
            state[prefix + "cluster_usage"] = torch.ones(bins)
            state[prefix + "_initialized"] = torch.ones(1)
            chosen = book[_nearest(residual, book)]
            if level < used:
                total = total + chosen
            residual = residual - chosen
        quantized.append(total)
    return quantized


def _fit_output_projections(q: Any, quantized: list[Tensor], cloud: Tensor, state: dict[str, Tensor]) -> None:
    """decoded latent = W_first q_first + W_rest q_rest: fit both (ridge) to reproduce the encoder's latents (the
    latent of silence is zero without biases: silence decodes to near silence, the decoder follows the codes)."""
    x = torch.cat(quantized, dim=1).double()
    y = cloud.double()
    ridge = 1e-3 * x.pow(2).mean() * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(x.T @ x + ridge, x.T @ y).float()  # (2*dimension, D)
    d_q = q.rvq_first.dimension
    state["quantizer.rvq_first.output_proj.weight"] = w[:d_q].T.contiguous()[:, :, None]
    state["quantizer.rvq_rest.output_proj.weight"] = w[d_q:].T.contiguous()[:, :, None]


def _train_tokenizer(path: Path, vocab: int, seed: int, family: FamilyName) -> None:
    """A SentencePiece model trained on generated text, with Moshi's special ids (0 unk, 1 bos, 2 eos, 3 pad)."""
    import sentencepiece as spm

    r = random.Random(seed)
    syllables = ["ka", "to", "mi", "re", "su", "no", "la", "be", "di", "po", "shi", "an", "el", "or", "um", "ya"]
    syllables += ["ve", "qu", "zo", "ni", "the", "and", "ou", "ch", "ai", "er", "es", "il", "on", "ment"]
    words = ["".join(r.choice(syllables) for _ in range(r.randint(1, 3))) for _ in range(600)]
    lines = [" ".join(r.choice(words) for _ in range(r.randint(3, 14))) for _ in range(3000)]
    if family == "personaplex":
        lines += [f"<system> {line} <system>" for line in lines[:200]]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=vocab,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())


@torch.no_grad()
def _voice_prompt(lm: Any, voice_codes: Tensor, sine_codes: Tensor) -> VoicePrompt:
    """What PersonaPlex's generator records while a voice prompt plays (``save_voice_prompt_embeddings``): each
    step the agent stream is forced to the voice's codes, the user stream to a sine's, text to padding; the
    summed input embeddings of every step after the first, and the token ring buffer at the end."""
    n_q, delays = lm.n_q, list(lm.delays)
    per_stream = n_q // 2
    ct = max(delays) + 3
    initial = [lm.text_card] + [lm.card] * n_q
    cache = torch.full((n_q + 1, ct), -2, dtype=torch.long)  # -2: not generated yet
    steps: list[Tensor] = []
    for offset in range(voice_codes.shape[1]):
        for q in range(per_stream):
            cache[1 + q, (offset + delays[1 + q]) % ct] = voice_codes[q, offset]
            cache[1 + per_stream + q, (offset + delays[1 + per_stream + q]) % ct] = sine_codes[q]
        cache[0, (offset + delays[0]) % ct] = PERSONAPLEX_PROMPT_TEXT_TOKEN
        for k, delay in enumerate(delays):
            if offset <= delay:
                cache[k, offset % ct] = initial[k]
        if offset == 0:
            cache[:, 0] = torch.tensor(initial)
            continue
        tokens = cache[:, (offset - 1) % ct]
        emb = lm.text_emb(tokens[:1].view(1, 1))
        for k in range(n_q):
            emb = emb + lm.emb[k](tokens[1 + k : 2 + k].view(1, 1))
        steps.append(emb)  # (1, 1, dim)
    return VoicePrompt(embeddings=torch.stack(steps, dim=0), cache=cache[None].clone())


def _voice_audio(name: str, seconds: float, seed: int) -> Tensor:
    """A speech-like prompt for one voice: pitch by the name's F/M, timbre and rhythm by name and seed."""
    g = torch.Generator().manual_seed(seed * 1000 + sum(ord(c) * (i + 1) for i, c in enumerate(name)))
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    u = torch.rand(4, generator=g, dtype=torch.float64)
    f0 = float(200 + 60 * u[0]) if name[3] == "F" else float(95 + 40 * u[0])
    freq = f0 * (1 + 0.06 * torch.sin(2 * torch.pi * (3 + 3 * u[1]) * t))
    phase = 2 * torch.pi * torch.cumsum(freq, 0) / SAMPLE_RATE
    tilt = 0.5 + u[2]
    voiced = sum(torch.sin(h * phase) / h**tilt for h in range(1, 8))
    envelope = torch.sin(torch.pi * (2.5 + 2 * u[3]) * t).abs() ** 1.5
    noise = 0.02 * torch.randn(n, generator=g, dtype=torch.float64)
    return (0.35 * voiced * envelope + noise).clamp(-1, 1).float()


def _write_tgz(directory: Path, files: list[Path], target: Path) -> None:
    """A reproducible ``voices.tgz`` (fixed times and owners) holding ``voices/NAME.pt``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(str(path.relative_to(directory)))
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    with target.open("wb") as f, gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())


@torch.no_grad()
def _write_voices(out: Path, lm: Any, mimi: Any, seed: int) -> None:
    """``voices/NAME.pt`` for every published voice name, and ``voices.tgz`` holding them (as NVIDIA ships);
    ``lm`` holds the weights as written (bf16), so the embeddings are those the loaded LM computes."""
    per_stream = lm.n_q // 2
    mimi.set_num_codebooks(per_stream)
    with no_compile():
        prompts = torch.stack([_voice_audio(name, 2.0, seed) for name in PERSONAPLEX_VOICES])[:, None]
        voice_codes = mimi.encode(prompts)  # (V, per_stream, frames)
        t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
        sine = (0.5 * torch.sin(2 * torch.pi * 440.0 * t))[None, None]  # PersonaPlex's "silent" user sine
        sine_codes = mimi.encode(sine)[0, :, -1]  # the steady-state frame
    (out / VOICES_DIR).mkdir()
    files = []
    for name, codes in zip(PERSONAPLEX_VOICES, voice_codes, strict=True):
        prompt = _voice_prompt(lm, codes, sine_codes)
        path = out / VOICES_DIR / f"{name}.pt"
        torch.save({"embeddings": prompt.embeddings.detach().clone(), "cache": prompt.cache}, path)
        files.append(path)
    _write_tgz(out, files, out / VOICES_TGZ)
