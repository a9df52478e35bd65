"""Synthetic speech-conversation corpora for training and evaluating full-duplex turn-taking.

``duplex corpus make`` renders two-party conversations with espeak-ng (see docs/corpus.md): the user's
microphone track, the target model track and time-aligned ground-truth events, split by voice.
"""

from duplex.model.corpus.check import check_conversation
from duplex.model.corpus.conversation import ConversationSpec, generate
from duplex.model.corpus.make import CorpusReport, make_corpus

__all__ = ["ConversationSpec", "CorpusReport", "check_conversation", "generate", "make_corpus"]
