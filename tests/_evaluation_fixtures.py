"""Constructed personas and transcripts with known answers for the evaluation tests."""

from __future__ import annotations

from personae.models import Conversation, ConversationStatus, Participant, Persona, Role, Scenario, StopReason, Utterance

GARDENER = Persona(
    name="Rosa Green",
    age=52,
    occupation="gardener",
    location="Devon",
    values=["patience", "growing things"],
    description="Rosa is a gardener in Devon who grows roses and tomatoes in her greenhouse, makes compost, prunes hedges and worries about slugs and frost.",
)
MECHANIC = Persona(
    name="Max Bolt",
    age=35,
    occupation="car mechanic",
    location="Leeds",
    values=["reliability"],
    description="Max is a car mechanic in Leeds who fixes engines, gearboxes and brakes, changes oil and tyres, and restores an old diesel van.",
)
BAKER = Persona(
    name="Ana Flour",
    age=41,
    occupation="baker",
    location="Lisbon",
    description="Ana bakes sourdough bread, croissants and custard tarts before dawn in her bakery, kneading dough and feeding her starter.",
)
TEACHER = Persona(
    name="Tom Chalk",
    age=60,
    occupation="maths teacher",
    location="Glasgow",
    description="Tom teaches algebra and geometry to teenagers, marks homework, sets exams and coaches the school chess club.",
)
SAILOR = Persona(
    name="Ines Wave",
    age=29,
    occupation="sailor",
    location="Brest",
    description="Ines sails cargo ships across the Atlantic, reads charts, ties knots, watches storms and misses her harbour town.",
)
POPULATION = [GARDENER, MECHANIC, BAKER, TEACHER, SAILOR]

SCENARIO = Scenario(name="chat", setting="a bus stop", roles=[Role(name="a"), Role(name="b")], max_turns=40)

GARDEN_LINES = [
    "My roses in the greenhouse need pruning before the frost comes.",
    "I spread compost on the tomatoes every spring in Devon.",
    "Slugs ate half my lettuce, so I pruned the hedges and checked the greenhouse.",
    "A gardener learns patience: roses, compost and tomatoes take time.",
    "The frost in Devon hurt my greenhouse tomatoes this year.",
    "I make compost from leaves and prune the roses in March.",
]
ENGINE_LINES = [
    "The diesel van needs an oil change and new brakes.",
    "I fixed a gearbox in Leeds today; the engine was leaking oil.",
    "Tyres and brakes first, then I look at the engine of the old van.",
    "A mechanic hears the gearbox before he sees it.",
    "Changing oil on a diesel engine is dirty work in Leeds.",
    "The brakes on that van squealed until I changed the pads and tyres.",
]
NEUTRAL_LINES = [
    "Did you see the football scores last night on television?",
    "Prices at the supermarket keep going up every single week.",
    "My cousin is getting married in a castle next summer.",
    "The new phone has a better camera but a worse battery.",
    "Traffic on the motorway was terrible this morning again.",
    "I think I will watch a film and order pizza tonight.",
]


def participants(*personas: Persona) -> list[Participant]:
    return [Participant(persona=p, role=r) for p, r in zip(personas, ("a", "b", "c", "d", "e"))]


def conversation(cid: str, turns: list[tuple[Persona, str]], members: list[Persona] | None = None, *,
                 stop: StopReason | None = StopReason.MAX_TURNS, status: ConversationStatus = ConversationStatus.COMPLETE) -> Conversation:
    members = members or list({p.id: p for p, _ in turns}.values())
    return Conversation(
        id=cid,
        scenario=SCENARIO,
        participants=participants(*members),
        utterances=[Utterance(speaker=p.id, turn=i, text=t) for i, (p, t) in enumerate(turns)],
        status=status,
        stop_reason=stop,
    )


def dialogue(cid: str, gardener_lines: list[str], mechanic_lines: list[str], *, offset: int = 0, n: int = 6) -> Conversation:
    """The gardener and the mechanic take turns, each saying the next of its lines."""
    turns = []
    for i in range(n):
        turns.append((GARDENER, gardener_lines[(i + offset) % 6]))
        turns.append((MECHANIC, mechanic_lines[(i + offset) % 6]))
    return conversation(cid, turns)


def in_character(cid: str = "conv-normal") -> Conversation:
    """Gardener and mechanic, each talking about their own world."""
    return dialogue(cid, GARDEN_LINES, ENGINE_LINES)


def swapped(cid: str = "conv-swapped") -> Conversation:
    """The same lines with the speakers swapped: each talks like the other persona."""
    return dialogue(cid, ENGINE_LINES, GARDEN_LINES)


def control(cid: str = "conv-control", offset: int = 0, n: int = 6) -> Conversation:
    """Same shape as :func:`echoing`, but the mechanic answers with its own lines."""
    return dialogue(cid, GARDEN_LINES, ENGINE_LINES, offset=offset, n=n)


def echoing(cid: str = "conv-echo", offset: int = 0, n: int = 6) -> Conversation:
    """The mechanic repeats the gardener's last line back, and the gardener moves on."""
    return dialogue(cid, GARDEN_LINES, ["Yes, " + line.lower() for line in GARDEN_LINES], offset=offset, n=n)


def drifting(cid: str = "conv-drift") -> Conversation:
    """The gardener starts on roses and compost and ends on small talk; the mechanic stays on engines."""
    turns = []
    for i in range(6):
        turns.append((GARDENER, GARDEN_LINES[i] if i < 3 else NEUTRAL_LINES[i]))
        turns.append((MECHANIC, ENGINE_LINES[i]))
    return conversation(cid, turns)


def monopolised(cid: str = "conv-mono") -> Conversation:
    """The mechanic talks at length every turn; the gardener says 'ok'."""
    turns = []
    for i in range(6):
        turns.append((MECHANIC, " ".join(ENGINE_LINES[i:] + ENGINE_LINES[:i])))
        turns.append((GARDENER, "Ok."))
    return conversation(cid, turns)
