"""Early fusion: every input modality goes through a lightweight embedding straight into one sequence.

No pretrained speech encoder, no voice-activity detector. One sequence position per audio frame (40 ms);
the position's input vector is the SUM of
  - the user's audio frame: raw samples → Linear, plus fixed log-mel + log-energy features → Linear
    (fixed transforms, no learned encoder; they make pitch/energy cues cheap to read),
  - typed text / tool-result bytes that arrive in this frame (``text_in_slots`` per frame, each slot
    with its own learned offset so order is kept),
  - a video frame, when one arrives: 8×8 RGB patches → Linear + patch position, averaged, added to the
    frame it arrived with (the first frame of its chunk when streaming),
  - the model's OWN outputs ``feedback_delay_frames`` frames earlier: its audio code, text token and
    floor-control class (BOS ids before there is any), and its agenda tokens when it has an agenda.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import invariant
from .config import ModelConfig
from .layers import Linear

N_MELS = 40


def mel_filterbank(n_fft: int, sample_rate: int, n_mels: int) -> Tensor:
    """Triangular HTK-style mel filters (n_fft//2+1, n_mels)."""

    def hz_to_mel(f: Tensor) -> Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: Tensor) -> Tensor:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    cpu = torch.device("cpu")  # explicit: also built inside a meta-device context
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64, device=cpu)
    top = 2595.0 * math.log10(1.0 + sample_rate / 2 / 700.0)
    edges = mel_to_hz(torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64, device=cpu))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lo) / (mid - lo)
    down = (hi - freqs[:, None]) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class AudioEmbed(nn.Module):
    """User audio frames (B, T, S) in [-1, 1] → (B, T, d)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.frame_samples, self.sample_rate = cfg.frame_samples, cfg.sample_rate
        self.raw = Linear(cfg.frame_samples, cfg.d_model, bias=False)
        self.feat = Linear(N_MELS + 1, cfg.d_model)
        self.window: Tensor
        self.mel: Tensor
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)compute the fixed, non-persistent analysis buffers (not stored in checkpoints)."""
        device = self.raw.weight.device if self.raw.weight.device.type != "meta" else torch.device("cpu")
        S = self.frame_samples
        self.register_buffer("window", torch.hann_window(S, device="cpu").to(device), persistent=False)
        self.register_buffer("mel", mel_filterbank(S, self.sample_rate, N_MELS).to(device), persistent=False)

    def features(self, frames: Tensor) -> Tensor:
        """Fixed features: log-mel (40) and log-energy (1) per frame, scaled to roughly unit range."""
        x = frames.float()  # FFTs have no bfloat16 kernels (CPU or cuFFT): fixed features run in float32
        spec = torch.fft.rfft(x * self.window.float(), dim=-1).abs().pow(2)  # (B, T, S/2+1)
        logmel = torch.log(invariant.matmul(spec, self.mel.float()) + 1e-8)
        energy = torch.log(x.pow(2).mean(-1, keepdim=True) + 1e-8)
        return (torch.cat([logmel, energy], dim=-1) / 10.0).to(frames.dtype)

    def forward(self, frames: Tensor) -> Tensor:
        return self.raw(frames) + self.feat(self.features(frames))


class VideoEmbed(nn.Module):
    """RGB frames (B, 3, V, V) in [0, 1] → (B, d): patch projection + patch position, averaged."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch = cfg.video_patch
        self.proj = Linear(3 * cfg.video_patch**2, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(cfg.video_patches, cfg.d_model) * 0.02)

    def forward(self, video: Tensor) -> Tensor:
        B, C, V, _ = video.shape
        p = self.patch
        patches = video.reshape(B, C, V // p, p, V // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * p * p)
        return (self.proj(patches) + self.pos).mean(dim=1)


class FusedInput(nn.Module):
    """All inputs of a span of frames → the transformer's input sequence (B, T, d)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.audio = AudioEmbed(cfg)
        self.own_audio = nn.Embedding(cfg.audio_codes + 1, d)  # last id = BOS (no output yet)
        self.own_text = nn.Embedding(cfg.text_vocab, d)  # PAD doubles as BOS
        self.own_control = nn.Embedding(cfg.control_classes + 1, d)  # last id = BOS
        self.text_in: nn.Embedding | None = None
        self.text_slot: nn.Parameter | None = None
        if cfg.text_in_slots:
            self.text_in = nn.Embedding(cfg.text_vocab, d, padding_idx=cfg.pad_token)
            self.text_slot = nn.Parameter(torch.randn(cfg.text_in_slots, d) * 0.02)
        self.video = VideoEmbed(cfg) if cfg.video_size else None
        for emb in (self.own_audio, self.own_text, self.own_control):
            nn.init.normal_(emb.weight, std=1.0 / math.sqrt(d))
        # zero at first: an agenda added to trained weights starts as no input at all (fine-tuning)
        self.own_agenda = nn.ModuleList(nn.Embedding(n, d) for n in cfg.agenda_classes)
        for table in self.own_agenda.parameters():
            nn.init.zeros_(table)

    def forward(
        self,
        frames: Tensor,
        own_audio: Tensor,
        own_text: Tensor,
        own_control: Tensor,
        text_in: Tensor | None = None,
        video: Tensor | None = None,
        video_at: Tensor | None = None,
        own_agenda: Tensor | None = None,
    ) -> Tensor:
        """frames (B, T, S) float; own_* (B, T) long (already delayed); text_in (B, T, slots) long;
        video (K, 3, V, V) float: K frames, the k-th added at (row, frame) = video_at[k] (K, 2) long;
        own_agenda (B, T, A) long, delayed (None = an empty agenda)."""
        x = self.audio(frames) + self.own_audio(own_audio) + self.own_text(own_text) + self.own_control(own_control)
        if own_agenda is not None:
            for i, emb in enumerate(self.own_agenda):
                x = x + emb(own_agenda[..., i])
        if text_in is not None and self.text_in is not None and self.text_slot is not None:
            present = (text_in != self.cfg.pad_token).unsqueeze(-1)  # (B, T, slots, 1)
            x = x + (self.text_in(text_in) + self.text_slot * present).sum(dim=2)
        if video is not None and video_at is not None and self.video is not None and video.shape[0]:
            x = x.index_put((video_at[:, 0], video_at[:, 1]), self.video(video), accumulate=True)
        return x
