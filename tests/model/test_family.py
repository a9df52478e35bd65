"""The engine's one interface to a model family, for the ``duplex`` family: the model's own floor-control enum
matches the wire contract, the byte text decoder, and a served step equals the model and codec run by hand."""

from __future__ import annotations

import torch

from duplex.model.codec import Codec
from duplex.model.family import Floor
from duplex.model.family_duplex import ByteTextDecoder, DuplexServed
from duplex.model.model import DuplexModel
from duplex.v1.duplex_pb2 import FloorControl


def test_the_models_floor_enum_is_the_wire_enum() -> None:
    assert [(f"FLOOR_{f.name}", int(f)) for f in Floor] == [
        (FloorControl.Name(v), v) for v in sorted(FloorControl.values())
    ]


def test_byte_text_decoder_joins_split_utf8_and_ends_on_eot() -> None:
    dec = ByteTextDecoder(eot_token=257)
    word = "héllo".encode()
    assert dec.feed(list(word[:2])) == ("h", False)  # the é is split between two steps
    assert dec.feed([256, *word[2:]]) == ("éllo", False)  # non-byte tokens (256 = pad) are not text
    assert dec.feed([256, 256]) == ("", False)
    assert dec.feed([257]) == ("", True)


def test_a_served_step_is_the_model_step_with_its_codec_gated_by_the_floor(tiny_model: DuplexModel) -> None:
    served = DuplexServed(tiny_model)
    fmt = served.format
    assert (fmt.family, fmt.sample_rate, fmt.frame_samples) == ("duplex", tiny_model.cfg.sample_rate, 640)
    frames = served.frames_per_chunk(200)
    t = torch.arange(frames * fmt.frame_samples) / fmt.sample_rate
    audio = torch.stack([0.3 * torch.sin(2 * torch.pi * f * t) for f in (180.0, 260.0)])
    state = served.new_slots(2)
    ref_state, codec = tiny_model.new_state(2), Codec(tiny_model.cfg)
    ref_codec = codec.new_state(2)
    for _ in range(4):
        got = served.step(state, audio, rows=slice(0, 2))
        out = tiny_model.step(ref_state, audio, rows=slice(0, 2))
        speaking = (out.control == Floor.SPEAK) | (out.control == Floor.BACKCHANNEL)
        wave = codec.decode(torch.where(speaking, out.audio_codes, 0), ref_codec, rows=slice(0, 2))
        assert torch.equal(got.control, out.control)
        assert got.text == out.text_tokens.tolist()
        assert torch.equal(got.wave, wave)
