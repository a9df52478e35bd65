"""Tiny random Moshi-family checkpoints built with the upstream ``moshi`` code, cheap enough for CPU tests.

A random Mimi maps every input to the same codes (its codebooks start as zeros) and decodes every code to nearly
the same audio (biases dominate), so ``tiny_mimi`` makes it listen: the codebooks of each residual level are
drawn from the encoder's latents (and their residuals) of varied audio, the decoder's biases are zeroed and the
quantizer's output projections scaled up, so codes follow the input and decoded audio follows the codes."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported: no torch.compile on CPU

import sentencepiece as spm
import torch
from moshi.models.compression import MimiModel
from moshi.models.lm import LMGen, LMModel
from moshi.models.loaders import _quantizer_kwargs, _seanet_kwargs, _transformer_kwargs, get_mimi
from moshi.modules.transformer import RingKVCache, StreamingMultiheadAttention
from safetensors.torch import save_file
from torch import Tensor, nn

from duplex.model.moshi.checkpoint import MoshiCheckpoint

__all__ = [  # LMGen and RingKVCache: upstream's, for test modules that must not import moshi before this one
    "CARD",
    "DELAYS",
    "DEP_Q",
    "FRAME",
    "PERSONAPLEX_CONTEXT",
    "SAMPLE_RATE",
    "TEXT_END_PAD",
    "TEXT_PAD",
    "LMGen",
    "RingKVCache",
    "tiny_checkpoint",
    "tiny_lm",
    "tiny_mimi",
    "tiny_personaplex_checkpoint",
    "tiny_tokenizer",
    "tone",
    "varied_audio",
    "write_checkpoint",
]

SAMPLE_RATE = 24000
FRAME = 1920
DEP_Q = 8
"""Audio codebooks per stream, as in Moshi (Mimi's first 8 levels)."""
CARD = 64
"""Codebook size of the tiny Mimi and LM (2048 in Moshi)."""
TEXT_PAD = 3
TEXT_END_PAD = 0
# Moshi's delays: text 0, then per stream (model, user) semantic level 0 and acoustic levels 1
DELAYS = [0] + ([0] + [1] * (DEP_Q - 1)) * 2
LM_CONTEXT = 24
"""Short, so a 30-frame session wraps the KV ring (3000 in Moshi)."""

_CORPUS = """hello there how are you doing today
i am fine thank you and you
the weather is nice and the sun is out
shall we talk about music or about books
i like to listen to the radio in the morning
tell me a story about a cat and a dog
"""


def varied_audio(rows: int, frames: int, seed: int = 0) -> Tensor:
    """Not silence: per row a chirp whose pitch glides and wobbles, plus harmonics, noise bursts and short
    gaps (rows, frames*FRAME) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    n = frames * FRAME
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    out = torch.empty(rows, n)
    for r in range(rows):
        f0, f1 = (80 + 400 * torch.rand(2, generator=g, dtype=torch.float64)).tolist()
        wobble = 3 + 5 * torch.rand(1, generator=g, dtype=torch.float64).item()
        freq = f0 + (f1 - f0) * t / t[-1] + 40 * torch.sin(2 * torch.pi * wobble * t)
        phase = 2 * torch.pi * torch.cumsum(freq, 0) / SAMPLE_RATE
        tone = 0.4 * torch.sin(phase) + 0.15 * torch.sin(2 * phase) + 0.08 * torch.sin(3 * phase)
        noise = 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
        gate = (torch.rand(frames, generator=g) > 0.2).double().repeat_interleave(FRAME)
        out[r] = ((tone + noise) * gate).clamp(-1, 1).float()
    return out


def tone(rows: int, frames: int, hz: float = 220.0) -> Tensor:
    t = torch.arange(frames * FRAME) / SAMPLE_RATE
    return (0.5 * torch.sin(2 * torch.pi * hz * t)).expand(rows, -1).clone()


def tiny_tokenizer() -> spm.SentencePieceProcessor:
    """A SentencePiece model trained in memory on a few lines, with Moshi's special ids (0 unk, 3 pad)."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS.splitlines()),
        model_writer=buf,
        vocab_size=60,
        hard_vocab_limit=False,
        model_type="unigram",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def tiny_mimi_config() -> dict[str, Any]:
    """Mimi's architecture (SEANet, 25 Hz transformers, split RVQ, 12.5 Hz codes) at a few percent of its width:
    the ``mimi_config_name`` file of a checkpoint directory."""
    dim = 32
    return {
        "sample_rate": SAMPLE_RATE,
        "channels": 1,
        "frame_rate": 12.5,
        "seanet": dict(_seanet_kwargs, dimension=dim, n_filters=4),
        "quantizer": dict(
            _quantizer_kwargs, dimension=16, n_q=DEP_Q, bins=CARD, input_dimension=dim, output_dimension=dim
        ),
        "transformer": dict(
            _transformer_kwargs,
            d_model=dim,
            num_heads=2,
            num_layers=1,
            dim_feedforward=64,
            input_dimension=dim,
            output_dimensions=[dim],
        ),
    }


@torch.no_grad()
def tiny_mimi(seed: int = 0) -> MimiModel:
    """Mimi's architecture (SEANet, 25 Hz transformers, split RVQ, 12.5 Hz codes) at a few percent of its width."""
    torch.manual_seed(seed)
    mimi = get_mimi(None, tiny_mimi_config(), num_codebooks=DEP_Q)
    for m in mimi.decoder.modules():
        if isinstance(m, nn.Conv1d | nn.ConvTranspose1d) and m.bias is not None:
            m.bias.zero_()
    latents = mimi._encode_to_unquantized_latent(varied_audio(8, 12, seed=seed + 100).unsqueeze(1))
    for rvq in (mimi.quantizer.rvq_first, mimi.quantizer.rvq_rest):
        rvq.output_proj.weight.mul_(8.0)
        residual = rvq.input_proj(latents).transpose(1, 2).reshape(-1, rvq.dimension)
        for layer in rvq.vq.layers:
            book = layer._codebook
            pick = torch.randperm(residual.shape[0])[:CARD]
            book.embedding_sum.copy_(residual[pick])
            book.cluster_usage.fill_(1.0)
            book._initialized.fill_(1.0)
            book.register_buffer("_embedding", None, persistent=False)  # drop the cached (zero) codebook
            residual = residual - book.decode(book.encode(residual))
    # bring the decoded audio to a speech-like level (about 0.1 RMS) with the decoder's last convolution
    last = [m for m in mimi.decoder.modules() if isinstance(m, nn.Conv1d)][-1]
    rms = mimi.decode(mimi.encode(varied_audio(2, 6, seed=seed + 200).unsqueeze(1))).pow(2).mean().sqrt()
    last.weight.mul_(0.1 / rms)
    return mimi.eval()


def tiny_lm_args(text_card: int) -> dict[str, Any]:
    """Moshi's LM layout (text + 8 model + 8 user codebooks, Moshi's delays, depformer with weights per step)
    at dim 64, 2 layers: config.json's LM arguments."""
    return dict(
        delays=DELAYS,
        n_q=2 * DEP_Q,
        dep_q=DEP_Q,
        card=CARD,
        text_card=text_card,
        existing_text_padding_id=TEXT_PAD,
        existing_text_end_padding_id=TEXT_END_PAD,
        dim=64,
        num_heads=4,
        num_layers=2,
        hidden_scale=2,
        causal=True,
        layer_scale=None,
        context=LM_CONTEXT,
        max_period=10000,
        gating="silu",
        norm="rms_norm_f32",
        positional_embedding="rope",
        depformer_dim=32,
        depformer_dim_feedforward=64,
        depformer_num_heads=2,
        depformer_num_layers=1,
        depformer_layer_scale=None,
        depformer_multi_linear=True,
        depformer_context=DEP_Q,
        depformer_max_period=10000,
        depformer_gating="silu",
        depformer_pos_emb="none",
        depformer_weights_per_step=True,
    )


def tiny_lm(text_card: int, seed: int = 0) -> LMModel:
    """``tiny_lm_args`` with random weights."""
    torch.manual_seed(seed)
    lm = LMModel(**tiny_lm_args(text_card))
    with torch.no_grad():
        # favour padding a little, as a trained model does, so the text stream mixes words and padding
        lm.text_linear.weight[TEXT_PAD] *= 3.0
    return lm.eval()


def tiny_checkpoint(seed: int = 0) -> MoshiCheckpoint:
    tok = tiny_tokenizer()
    return MoshiCheckpoint(
        family="moshi",
        name="tiny-moshi",
        lm=tiny_lm(tok.get_piece_size(), seed),
        mimi=tiny_mimi(seed),
        text_tokenizer=tok,
    )


def fused_by_module(module: nn.Module) -> dict[str, Tensor]:
    """The published layout, written independently of the project's own writer: per attention module, its
    per-step projections stacked into ``in_proj_weight`` / ``out_proj.weight``."""
    state = dict(module.state_dict())
    for prefix, m in module.named_modules():
        if isinstance(m, StreamingMultiheadAttention):
            ins = [state.pop(f"{prefix}.in_projs.{i}.weight") for i in range(len(m.in_projs))]
            outs = [state.pop(f"{prefix}.out_projs.{i}.weight") for i in range(len(m.out_projs))]
            state[f"{prefix}.in_proj_weight"] = torch.cat(ins)
            state[f"{prefix}.out_proj.weight"] = torch.cat(outs)
    return {k: v.contiguous() for k, v in state.items()}


def write_checkpoint(directory: Path, seed: int = 0) -> Path:
    """``tiny_checkpoint(seed)``'s modules as a checkpoint directory in Kyutai's layout (config.json with the LM
    arguments and file names, fused LM weights, Mimi weights and config, the SentencePiece model), written with
    upstream modules and this file's code only."""
    ck = tiny_checkpoint(seed)
    directory.mkdir(parents=True)
    lm_args = tiny_lm_args(ck.text_tokenizer.get_piece_size())
    names = {
        "moshi_name": "lm-tiny.safetensors",
        "mimi_name": "mimi-tiny.safetensors",
        "mimi_config_name": "mimi-tiny.json",
        "tokenizer_name": "text-tiny.model",
    }
    save_file(fused_by_module(ck.lm), str(directory / names["moshi_name"]))
    save_file(fused_by_module(ck.mimi), str(directory / names["mimi_name"]))
    (directory / names["mimi_config_name"]).write_text(json.dumps(tiny_mimi_config()))
    (directory / names["tokenizer_name"]).write_bytes(ck.text_tokenizer.serialized_model_proto())
    (directory / "config.json").write_text(json.dumps({**lm_args, **names, "model_type": "moshi"}))
    return directory


PERSONAPLEX_TEST_VOICES = ("NATF0", "NATF1", "NATM1", "VARM2")
PERSONAPLEX_CONTEXT = 200
"""Room for a voice, its silences and a persona (3000 in PersonaPlex)."""


@torch.no_grad()
def tiny_personaplex_checkpoint(directory: Path, seed: int = 0) -> MoshiCheckpoint:
    """``tiny_checkpoint``'s shapes in PersonaPlex's layout — the depformer predicts both streams (``dep_q = n_q
    = 16``) — with voice prompts ``directory/voices/NAME.pt`` recorded from varied audio as NVIDIA's generator
    records them (``duplex.model.moshi.tiny``'s recorder; its own checkpoint is too slow for many CPU steps)."""
    from duplex.model.moshi.tiny import _voice_prompt

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    args = dict(tiny_lm_args(tok.get_piece_size()), dep_q=2 * DEP_Q, depformer_context=2 * DEP_Q)
    args["context"] = PERSONAPLEX_CONTEXT
    lm = LMModel(**args).eval()
    lm.text_linear.weight[TEXT_PAD] *= 3.0
    mimi = tiny_mimi(seed)
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    sine_codes = mimi.encode((0.5 * torch.sin(2 * torch.pi * 440.0 * t))[None, None])[0, :, -1]
    (directory / "voices").mkdir(parents=True)
    voices: dict[str, Path] = {}
    for i, name in enumerate(PERSONAPLEX_TEST_VOICES):
        codes = mimi.encode(varied_audio(1, 10, seed=seed + 50 + i)[:, None])[0]
        prompt = _voice_prompt(lm, codes, sine_codes)
        voices[name] = directory / "voices" / f"{name}.pt"
        torch.save({"embeddings": prompt.embeddings.clone(), "cache": prompt.cache}, voices[name])
    return MoshiCheckpoint(
        family="personaplex", name="tiny-personaplex", lm=lm, mimi=mimi, text_tokenizer=tok, voices=voices
    )
