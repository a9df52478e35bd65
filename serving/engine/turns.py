"""Turn events from the model's per-frame floor control (pure: no I/O, no torch).

listen→speak = model turn start; speak→listen = model turn end; a run of backchannel frames while the
user holds the floor = one backchannel event; yield = the user barged in: the model's turn ends and the
event says how many samples of that turn the server had already sent (the client's truncation point).
"""

from __future__ import annotations

from dataclasses import dataclass

from duplex.v1 import duplex_pb2 as pb
from duplex.v1.duplex_pb2 import FLOOR_BACKCHANNEL, FLOOR_SPEAK, FLOOR_YIELD


@dataclass
class TurnTracker:
    """Per-session turn state across chunks."""

    frame_samples: int
    in_turn: bool = False
    in_backchannel: bool = False
    turn_samples: int = 0
    """Model audio samples sent in the current turn."""
    user_voiced_at: int = -1
    """Output-stream sample (= input-stream sample) of the user's last voiced frame, -1 = none yet."""

    def feed(
        self,
        seq: int,
        controls: list[int],
        voiced: list[bool],
        start_sample: int,
    ) -> tuple[list[pb.TurnEvent], list[int]]:
        """Advance by one chunk; returns its turn events and the turn-taking latencies (samples) observed."""
        events: list[pb.TurnEvent] = []
        latencies: list[int] = []
        S = self.frame_samples
        for f, c in enumerate(controls):
            at = start_sample + f * S
            if voiced[f]:
                self.user_voiced_at = at + S
            if c == FLOOR_SPEAK or (c == FLOOR_BACKCHANNEL and self.in_turn):
                if not self.in_turn:
                    self.in_turn, self.turn_samples = True, 0
                    events.append(pb.TurnEvent(seq=seq, type=pb.MODEL_TURN_START, frame=f, output_sample=at))
                    if self.user_voiced_at >= 0 and not voiced[f]:
                        latencies.append(at - self.user_voiced_at)
                self.turn_samples += S
                self.in_backchannel = False
            elif c == FLOOR_BACKCHANNEL:
                if not self.in_backchannel:
                    events.append(pb.TurnEvent(seq=seq, type=pb.BACKCHANNEL, frame=f, output_sample=at))
                self.in_backchannel = True
            elif c == FLOOR_YIELD:
                if self.in_turn:
                    events.append(
                        pb.TurnEvent(
                            seq=seq,
                            type=pb.USER_BARGE_IN,
                            frame=f,
                            output_sample=at,
                            truncated_at_sample=self.turn_samples,
                        )
                    )
                    self.in_turn = False
                self.in_backchannel = False
            else:  # FLOOR_LISTEN
                if self.in_turn:
                    events.append(
                        pb.TurnEvent(
                            seq=seq,
                            type=pb.MODEL_TURN_END,
                            frame=f,
                            output_sample=at,
                            truncated_at_sample=self.turn_samples,
                        )
                    )
                    self.in_turn = False
                self.in_backchannel = False
        return events, latencies
