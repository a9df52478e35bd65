"""Template grammar for the words spoken in synthetic conversations.

The earlier turn-taking experiment (docs/corpus.md) memorised its training conversations, so the text must
not repeat: subjects x verbs x objects x places x times x numbers give millions of distinct clauses. The
grammar is deliberately simple English that espeak-ng pronounces well; numbers are spelled out so the
recorded text is exactly what is spoken. Everything is driven by a caller-supplied numpy ``Generator``,
so a conversation's text is a pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Cue = Literal["comma", "comma_conjunction", "bare_conjunction", "final"]
"""How a clause ends. Mid-turn clauses end with a prosodic cue (",", ", and,") or only a lexical one (a bare
"and"/"but"/"so" — espeak then renders falling end-of-utterance prosody); the last clause is ``final``."""

MID_TURN_CUES: tuple[Cue, ...] = ("comma", "comma_conjunction", "bare_conjunction")
CONJUNCTIONS = ("and", "but", "so")

SUBJECTS = (
    "I",
    "we",
    "my sister",
    "my brother",
    "my neighbour",
    "our manager",
    "the kids",
    "my friend Sam",
    "my aunt",
    "the new intern",
    "my cousin",
    "our landlord",
    "the teacher",
    "my dad",
    "my mum",
    "the doctor",
    "a colleague of mine",
    "the delivery driver",
    "my grandmother",
    "our team",
    "the plumber",
    "Maria",
    "Daniel",
    "Priya",
    "Tom",
    "Olivia",
    "Kenji",
    "Fatima",
    "the coach",
    "my roommate",
    "the baker",
    "our guests",
    "the mechanic",
    "my partner",
    "the tour guide",
)
VERBS_PAST = (
    "bought",
    "found",
    "lost",
    "fixed",
    "painted",
    "borrowed",
    "returned",
    "ordered",
    "cleaned",
    "sold",
    "wrapped",
    "moved",
    "picked up",
    "dropped off",
    "forgot",
    "looked at",
    "talked about",
    "packed",
    "measured",
    "replaced",
    "delivered",
    "booked",
    "cancelled",
    "photographed",
    "repaired",
    "hid",
    "carried",
    "checked",
    "signed",
    "printed",
    "planted",
    "watered",
    "counted",
    "labelled",
)
VERBS_BASE = (
    "buy",
    "find",
    "fix",
    "paint",
    "borrow",
    "return",
    "order",
    "clean",
    "sell",
    "wrap",
    "move",
    "pick up",
    "drop off",
    "pack",
    "measure",
    "replace",
    "deliver",
    "book",
    "cancel",
    "repair",
    "carry",
    "check",
    "sign",
    "print",
    "plant",
    "water",
    "count",
    "label",
    "collect",
    "share",
)
ADJECTIVES = (
    "red",
    "old",
    "new",
    "tiny",
    "heavy",
    "broken",
    "shiny",
    "wooden",
    "green",
    "cheap",
    "expensive",
    "blue",
    "plastic",
    "huge",
    "spare",
    "second",
    "yellow",
    "folding",
    "electric",
    "antique",
    "striped",
    "dusty",
    "brand new",
    "purple",
    "orange",
    "borrowed",
    "handmade",
    "silver",
    "leather",
    "paper",
)
NOUNS = (
    ("bicycle", "bicycles"),
    ("lamp", "lamps"),
    ("ladder", "ladders"),
    ("map", "maps"),
    ("chair", "chairs"),
    ("kettle", "kettles"),
    ("jacket", "jackets"),
    ("suitcase", "suitcases"),
    ("umbrella", "umbrellas"),
    ("printer", "printers"),
    ("blanket", "blankets"),
    ("guitar", "guitars"),
    ("camera", "cameras"),
    ("table", "tables"),
    ("mirror", "mirrors"),
    ("basket", "baskets"),
    ("notebook", "notebooks"),
    ("tent", "tents"),
    ("drill", "drills"),
    ("sofa", "sofas"),
    ("plant", "plants"),
    ("clock", "clocks"),
    ("box", "boxes"),
    ("ticket", "tickets"),
    ("key", "keys"),
    ("bottle", "bottles"),
    ("shelf", "shelves"),
    ("scarf", "scarves"),
    ("cake", "cakes"),
    ("phone", "phones"),
    ("helmet", "helmets"),
    ("rug", "rugs"),
    ("window", "windows"),
    ("battery", "batteries"),
    ("painting", "paintings"),
    ("sandwich", "sandwiches"),
    ("envelope", "envelopes"),
    ("radio", "radios"),
    ("backpack", "backpacks"),
    ("candle", "candles"),
)
PLACES = (
    "the market",
    "the station",
    "the garden",
    "the library",
    "the office",
    "the garage",
    "the bakery",
    "the post office",
    "the museum",
    "the harbour",
    "the park",
    "the pharmacy",
    "the school",
    "the bank",
    "the hospital",
    "the airport",
    "the beach",
    "the hardware shop",
    "the town hall",
    "the bus stop",
    "the supermarket",
    "the gym",
    "the swimming pool",
    "the cinema",
    "the bridge",
    "the car park",
)
PREPOSITIONS = ("at", "near", "behind", "next to", "outside", "across from", "inside", "around")
TIMES = (
    "yesterday",
    "last night",
    "this morning",
    "on Monday",
    "on Tuesday",
    "on Wednesday",
    "on Thursday",
    "on Friday",
    "over the weekend",
    "last week",
    "a few days ago",
    "this afternoon",
    "before lunch",
    "after dinner",
    "earlier today",
    "last month",
    "on Saturday morning",
    "on Sunday evening",
    "at noon",
    "right after work",
    "two days ago",
    "just now",
)
FUTURE_TIMES = (
    "tomorrow",
    "tonight",
    "next week",
    "on Monday",
    "on Friday",
    "this weekend",
    "later today",
    "next month",
    "in the morning",
    "after lunch",
    "before the meeting",
    "on Saturday",
)
OPINIONS = (
    "great",
    "lovely",
    "a bit risky",
    "really useful",
    "pretty clever",
    "like a good plan",
    "fun",
    "a little expensive",
    "perfectly fine",
    "very sensible",
    "exciting",
    "like a lot of work",
)
WEATHER = ("sunny", "cloudy", "rainy", "windy", "quite cold", "warm", "foggy", "clear")
EVENTS = (
    "the party",
    "the picnic",
    "the trip",
    "the meeting",
    "the wedding",
    "the workshop",
    "the concert",
    "the barbecue",
    "the school fair",
    "the move",
)
INTROS = ("", "", "", "well, ", "so, ", "you know, ", "honestly, ", "actually, ", "okay, ", "oh, ")
ACKS = (
    "Oh, I see.",
    "Right.",
    "Okay.",
    "That makes sense.",
    "Got it.",
    "Ah, interesting.",
    "Oh, nice.",
    "I understand.",
    "Sure.",
    "Good to know.",
)
BACKCHANNELS = ("mm-hm", "yeah", "right", "okay", "uh-huh")

ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    """Spell 0..999 in words, so the text records what espeak actually says."""
    if not 0 <= n <= 999:
        raise ValueError(f"number out of range: {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _noun(rng: np.random.Generator) -> tuple[str, str]:
    return NOUNS[int(rng.integers(len(NOUNS)))]


def object_phrase(rng: np.random.Generator) -> str:
    """A noun phrase: determiner, optional adjective, noun (or a counted plural)."""
    singular, plural = _noun(rng)
    adjective = _pick(rng, ADJECTIVES) + " " if rng.random() < 0.7 else ""
    roll = rng.random()
    if roll < 0.2:
        count = int(rng.integers(2, 60))
        return f"{number_words(count)} {adjective}{plural}"
    if roll < 0.55:
        article = "an" if (adjective or singular)[0] in "aeiou" else "a"
        return f"{article} {adjective}{singular}"
    determiner = _pick(rng, ("the", "my", "our", "that", "her", "his", "their"))
    return f"{determiner} {adjective}{singular}"


def clock_time(rng: np.random.Generator) -> str:
    hour = number_words(int(rng.integers(1, 13)))
    minute = _pick(rng, ("", " fifteen", " thirty", " forty five", " o'clock"))
    return f"{hour}{minute}" if rng.random() < 0.7 else f"half past {hour}"


def statement_clause(rng: np.random.Generator) -> str:
    """One declarative clause without final punctuation, e.g. 'my aunt fixed the old lamp near the bank'."""
    subject = _pick(rng, SUBJECTS)
    kind = rng.random()
    if kind < 0.55:
        core = f"{subject} {_pick(rng, VERBS_PAST)} {object_phrase(rng)}"
    elif kind < 0.8:
        modal = _pick(rng, ("will", "might", "should", "could", "would like to", "have to", "need to"))
        if subject not in ("I", "we", "the kids", "our guests") and modal in ("have to", "need to"):
            modal = "has to" if modal == "have to" else "needs to"
        core = f"{subject} {modal} {_pick(rng, VERBS_BASE)} {object_phrase(rng)}"
    else:
        reported = "heard that" if subject in ("I", "we") else "told me that"
        core = f"{subject} {reported} {_pick(rng, SUBJECTS)} {_pick(rng, VERBS_PAST)} {object_phrase(rng)}"
    if rng.random() < 0.6:
        core += f" {_pick(rng, PREPOSITIONS)} {_pick(rng, PLACES)}"
    if rng.random() < 0.5:
        core += f" {_pick(rng, TIMES)}"
    return _pick(rng, INTROS) + core


@dataclass(frozen=True)
class Question:
    """A user question and the answer a perfect model gives to it."""

    text: str
    answer: str


def question(rng: np.random.Generator) -> Question:
    """A question clause (ending in '?') paired with a matching answer."""
    form = int(rng.integers(9))
    obj = object_phrase(rng)
    place = _pick(rng, PLACES)
    if form == 0:
        return Question(
            f"do you know where I can find {obj}?", f"You can find {obj} {_pick(rng, PREPOSITIONS)} {place}."
        )
    if form == 1:
        return Question(f"what time does {place} open {_pick(rng, FUTURE_TIMES)}?", f"It opens at {clock_time(rng)}.")
    if form == 2:
        return Question(
            f"can you tell me how to get to {place}?",
            f"Go past {_pick(rng, PLACES)} and turn {_pick(rng, ('left', 'right'))}, "
            f"it is about {number_words(int(rng.integers(2, 30)))} minutes away.",
        )
    if form == 3:
        _, plural = _noun(rng)
        event = _pick(rng, EVENTS)
        return Question(
            f"how many {plural} do we need for {event}?",
            f"I would bring about {number_words(int(rng.integers(2, 40)))} {plural}.",
        )
    if form == 4:
        when = _pick(rng, FUTURE_TIMES)
        return Question(
            f"is it going to rain {when}?",
            f"It looks {_pick(rng, WEATHER)} {when}, so {_pick(rng, ('maybe', 'probably not'))}.",
        )
    if form == 5:
        verb = _pick(rng, VERBS_BASE)
        return Question(
            f"should I {verb} {obj} {_pick(rng, FUTURE_TIMES)}?",
            _pick(
                rng,
                (
                    f"Yes, I think you should {verb} it soon.",
                    f"I would wait until {_pick(rng, FUTURE_TIMES)}.",
                    "No, there is no hurry.",
                ),
            ),
        )
    if form == 6:
        return Question(f"what do you think about {obj}?", f"I think it sounds {_pick(rng, OPINIONS)}.")
    if form == 7:
        verb = _pick(rng, VERBS_BASE)
        return Question(
            f"could you remind me to {verb} {obj} {_pick(rng, FUTURE_TIMES)}?",
            f"Sure, I will remind you {_pick(rng, FUTURE_TIMES)}.",
        )
    a, b = int(rng.integers(2, 50)), int(rng.integers(2, 50))
    return Question(
        f"what is {number_words(a)} plus {number_words(b)}?",
        f"{number_words(a)} plus {number_words(b)} is {number_words(a + b)}.".capitalize(),
    )


def statement_reply(rng: np.random.Generator) -> str:
    """What the model says after a user statement: an acknowledgement, sometimes a comment or question."""
    roll = rng.random()
    ack = _pick(rng, ACKS)
    if roll < 0.3:
        return ack
    if roll < 0.65:
        return f"{ack} That sounds {_pick(rng, OPINIONS)}."
    follow = _pick(
        rng,
        (
            "How did that go?",
            "Was it busy?",
            "Do you need any help with it?",
            "What happens next?",
            "Tell me more.",
            "How long did it take?",
        ),
    )
    return f"{ack} {follow}"


def greeting(rng: np.random.Generator) -> str:
    """An optional opening line of the model, so not every conversation starts with the user."""
    return _pick(
        rng,
        (
            "Hi, how can I help you today?",
            "Hello, what can I do for you?",
            "Hi there, what's on your mind?",
            "Good to hear from you, how are things?",
        ),
    )


@dataclass(frozen=True)
class Clause:
    """One spoken user clause: ``text`` is what is rendered and recorded, ``cue`` how it ends."""

    text: str
    cue: Cue
    conjunction: str | None = None


@dataclass(frozen=True)
class UserTurn:
    """A scripted user turn: 1–3 clauses, and the reply a perfect model gives (an answer to a question)."""

    clauses: tuple[Clause, ...]
    is_question: bool
    reply: str


def _with_cue(text: str, cue: Cue, conjunction: str | None) -> str:
    if cue == "comma":
        return text + ","
    if cue == "comma_conjunction":
        return f"{text}, {conjunction},"
    if cue == "bare_conjunction":
        return f"{text} {conjunction}"
    return text


def user_turn(rng: np.random.Generator, max_clauses: int = 3, opener: str = "") -> UserTurn:
    """A user turn of 1..max_clauses clauses; mid-turn clauses carry one of the three pause cues.

    ``opener`` (e.g. "wait, ") starts the turn — used when the user barges in on the model.
    """
    n = int(rng.integers(1, max_clauses + 1))
    clauses: list[Clause] = []
    for _ in range(n - 1):
        cue: Cue = MID_TURN_CUES[int(rng.integers(len(MID_TURN_CUES)))]
        conj = None if cue == "comma" else _pick(rng, CONJUNCTIONS)
        clauses.append(Clause(_with_cue(statement_clause(rng), cue, conj), cue, conj))
    is_question = bool(rng.random() < 0.45)
    if is_question:
        q = question(rng)
        lead = _pick(rng, ("", "", "so ", "hey, ", "quick question, ", "by the way, "))
        final, reply = lead + q.text, q.answer
    else:
        body = statement_clause(rng)
        final, reply = body + ".", statement_reply(rng)
    clauses.append(Clause(final, "final"))
    first = clauses[0]
    clauses[0] = _capitalise(Clause(opener + first.text, first.cue, first.conjunction))
    return UserTurn(tuple(clauses), is_question, reply)


def _capitalise(clause: Clause) -> Clause:
    text = clause.text[:1].upper() + clause.text[1:]
    return Clause(text, clause.cue, clause.conjunction)
