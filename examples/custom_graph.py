"""A custom graph: a three-party negotiation with a mediator and a critic on one side only.

Composed by hand from personae's node factories with LangGraph's ``StateGraph``:

    orchestrator ─► persona ─► critic ─┬─(revise)─► persona
         ▲                             └─(accept)─► termination ─┬─(stop)─► END
         └───────────────────────────────────────────────────────┘

* a custom turn policy: the mediator opens and speaks every fourth turn, buyer and
  seller alternate in between;
* the critic reviews only the seller (rules: no ultimatums, name a price), so the
  buyer and the mediator are never sent back;
* termination by max turns or a closing exchange (no LLM detector here).

Runs offline by default on a scripted fake model (a fake: the dialogue is canned,
the graph mechanics are real). ``--local`` uses the embedded SmolLM2 model instead.

    python examples/custom_graph.py [--local] [--turns 9]
"""

from __future__ import annotations

import argparse
import asyncio
import random

from langgraph.graph import END, START, StateGraph

from personae import Gateway, Participant, Persona, Role, Scenario
from personae.ids import content_hash
from personae.llm.base import LLMRequest
from personae.llm.testing import ScriptedLLM
from personae.nodes import (
    ConstraintRule,
    CriticConfig,
    DialogueState,
    RunContext,
    TerminationConfig,
    TurnView,
    initial_state,
    make_critic_node,
    make_orchestrator_node,
    make_persona_node,
    make_termination_node,
    route_after_critic,
    route_after_termination,
)

SCENARIO = Scenario(
    name="Used car negotiation",
    setting="A buyer and a seller negotiate the price of a 2015 hatchback; a mediator keeps it fair.",
    roles=[
        Role(name="mediator", goal="help both sides reach a fair price", description="You are neutral."),
        Role(name="buyer", goal="buy the car for at most 7,000 euros"),
        Role(name="seller", goal="sell the car for at least 6,500 euros"),
    ],
    constraints=["Talk about price in euros.", "No ultimatums."],
    max_turns=9,
    min_turns=4,
)

PEOPLE = [
    Participant(persona=Persona(name="Ines", occupation="mediator", description="Calm, fair, summarises often."), role="mediator"),
    Participant(persona=Persona(name="Tom", age=34, occupation="nurse", description="Careful with money, needs a car for night shifts."), role="buyer"),
    Participant(persona=Persona(name="Sam", age=58, occupation="retired mechanic", description="Proud of the car he maintained himself."), role="seller"),
]


def mediator_every_fourth_turn(view: TurnView) -> str:
    """Turn policy: the mediator opens and speaks on turns 0, 4, 8…; buyer and seller alternate."""
    mediator, buyer, seller = (p.id for p in view.participants)
    if view.turn % 4 == 0:
        return mediator
    return buyer if view.turn % 4 in (1, 3) else seller


def build(gateway: Gateway):
    """The negotiation graph, compiled (add ``checkpointer=`` to make it resumable)."""
    critic = CriticConfig(
        speakers=["seller"],
        max_attempts=2,
        llm=False,  # rules only: cheap and deterministic; set True to add the critic model
        rules=[
            ConstraintRule(pattern=r"final offer|take it or leave it", message="No ultimatums: keep negotiating."),
            ConstraintRule(pattern=r"\d", kind="require", message="Name a concrete price in euros."),
        ],
    )
    builder = StateGraph(DialogueState, context_schema=RunContext)
    builder.add_node("orchestrator", make_orchestrator_node(mediator_every_fourth_turn))
    builder.add_node("persona", make_persona_node(gateway, review=True, window=6, max_tokens=120))
    builder.add_node("critic", make_critic_node(critic, gateway=gateway))
    builder.add_node("termination", make_termination_node(TerminationConfig(detector=False)))
    builder.add_edge(START, "orchestrator")
    builder.add_edge("orchestrator", "persona")
    builder.add_edge("persona", "critic")
    builder.add_conditional_edges("critic", route_after_critic, {"revise": "persona", "accept": "termination"})
    builder.add_conditional_edges("termination", route_after_termination, {"continue": "orchestrator", "stop": END})
    return builder.compile(name="negotiation")


def scripted_negotiator(request: LLMRequest) -> str:
    """Canned lines per speaker (a fake model for running offline)."""
    system = request.messages[0].content
    rng = random.Random(content_hash([request.seed, len(request.messages)]))
    if system.startswith("You are Ines"):
        if len(request.messages) <= 2:
            return "Welcome, both. Tom wants to buy, Sam wants to sell; let's hear your numbers."
        return rng.choice(["Let's find a price that works for both of you.", "So we are somewhere between your two numbers. Can you meet halfway?"])
    if system.startswith("You are Tom"):
        return f"I can offer {rng.choice([6000, 6200, 6400, 6600])} euros, it's a 2015 car after all."
    revising = "cannot be used" in request.messages[-1].content
    if not revising and rng.random() < 0.5:
        return "That is my final offer, take it or leave it."  # the critic sends this back
    return f"I could go down to {rng.choice([7400, 7100, 6900, 6800])} euros, the engine is like new."


def make_gateway(local: bool) -> Gateway:
    """The scripted fake, or the embedded local model with ``local``."""
    if local:
        from personae.llm.local import LocalLlamaLLM

        return Gateway(LocalLlamaLLM(), max_concurrency=1)
    return Gateway(ScriptedLLM(scripted_negotiator))


def studio_graph(config=None):
    """The negotiation graph on the scripted fake model, for LangGraph Studio (``langgraph.json``)."""
    return build(make_gateway(local=False))


async def negotiate(gateway: Gateway, *, turns: int = 9, seed: int = 0) -> dict:
    """Run one negotiation and return the final state."""
    graph = build(gateway)
    scenario = SCENARIO.model_copy(update={"max_turns": turns, "min_turns": min(SCENARIO.min_turns, turns)})
    return await graph.ainvoke(
        initial_state(scenario, PEOPLE),
        {"recursion_limit": 10 * turns + 20},
        context=RunContext(conversation_id="negotiation-demo", seed=seed),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="use the embedded SmolLM2 model instead of the scripted fake")
    parser.add_argument("--turns", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    gateway = make_gateway(args.local)
    state = asyncio.run(negotiate(gateway, turns=args.turns, seed=args.seed))
    names = {p.id: f"{p.persona.name} ({p.role})" for p in PEOPLE}
    for utt in state["transcript"]:
        verdict = utt["metadata"].get("critic")
        note = f"   [critic: {verdict['verdict']}, {verdict['attempts']} attempt(s)]" if verdict else ""
        print(f"{names[utt['speaker']]}: {utt['text']}{note}")
    print(f"-- stopped: {state['stop_reason']} ({state['stop_detail']})")


if __name__ == "__main__":
    main()
