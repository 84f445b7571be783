"""A person talking with one persona: the persona node and memory node of a run, turn by turn.

A :class:`ChatSession` is a dyad whose other seat is a human. Each message is committed
to the transcript, then the persona node answers with the run's projection, window,
temperature and (when the run used memory) the persona's memory: retrieved into its
prompt, and the session observed into it, so the persona remembers the chat in later
conversations. :meth:`ChatSession.conversation` gives the session as a
:class:`~personae.models.Conversation` (``metadata["kind"] == "chat"``) that evaluation
reads like any simulated conversation.
"""

from __future__ import annotations

import logging
from typing import Any

from langgraph.runtime import Runtime

from personae.graphs.config import GraphConfig
from personae.graphs.runner import conversation_metrics
from personae.ids import stable_id
from personae.llm.gateway import Gateway
from personae.models import Conversation, ConversationStatus, Participant, Persona, Scenario, Utterance
from personae.nodes.persona import make_persona_node
from personae.nodes.state import DialogueState, RunContext, derive_seed, initial_state, merge_by_id, transcript_of, utterance_id
from personae.prompts import PromptSet

__all__ = ["CHAT_KIND", "USER_ID", "ChatSession", "chat_id", "session_seed", "user_participant"]

log = logging.getLogger(__name__)

CHAT_KIND = "chat"
"""``Conversation.metadata["kind"]`` of a chat session."""

USER_ID = "user"
"""Participant id of the human in a chat."""


def chat_id(run: str, persona_id: str, session: int) -> str:
    """The id of ``persona_id``'s ``session``-th chat in ``run``: stable, so a rerun names it the same."""
    return stable_id("chat", run, persona_id, session)


def user_participant(scenario: Scenario, persona_role: str, name: str = "User") -> Participant:
    """The human's seat: the scenario's other role (its first one that is not ``persona_role``)."""
    role = next((r.name for r in scenario.roles if r.name != persona_role), persona_role)
    return Participant(
        id=USER_ID,
        persona=Persona(name=name, description="A real person chatting with you."),
        role=role,
    )


class ChatSession:
    """One chat between a person and ``persona``, on the run's graph settings.

    Args:
        persona: the persona's seat (its role in the run's scenario).
        user: the human's seat (:func:`user_participant`).
        scenario: the setting both are in.
        graph: the run's graph config: projection, window, temperature, max tokens, memory k and reflection.
        gateway: serves the persona's model calls.
        memory: the run's :class:`~personae.memory.AgentMemory`, or ``None`` when the run had no memory.
        conversation_id: the session's id (:func:`chat_id`); memories are filed under it.
        seed: seeds the persona's calls.

    Call :meth:`start` once before :meth:`send` (it reads the persona's memory clock).
    """

    def __init__(
        self,
        persona: Participant,
        user: Participant,
        scenario: Scenario,
        graph: GraphConfig,
        *,
        gateway: Gateway,
        memory: Any = None,
        prompts: PromptSet | None = None,
        conversation_id: str,
        seed: int = 0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if persona.id == user.id:
            raise ValueError(f"the persona and the user need different participant ids, both are {user.id!r}")
        self.persona, self.user, self.scenario, self.graph = persona, user, scenario, graph
        self.memory = memory
        self.conversation_id = conversation_id
        self.extra = dict(metadata or {})
        self._runtime = Runtime(context=RunContext(conversation_id=conversation_id, seed=seed))
        retriever = None
        self._observe = None
        if memory is not None:
            from personae.nodes.memory import make_memory_node, make_memory_retriever

            retriever = make_memory_retriever(memory, k=graph.memory.k)
            self._observe = make_memory_node(
                memory, gateway=gateway, reflect=graph.memory.reflect, reflect_threshold=graph.memory.reflect_threshold,
                prompts=prompts, observers={persona.id},
            )
        self._speak = make_persona_node(
            gateway, prompts=prompts, projection=graph.projection, window=graph.window, retriever=retriever,
            review=False, temperature=graph.temperature, max_tokens=graph.max_tokens,
        )
        self.state: DialogueState = initial_state(scenario, [persona, user])
        self._started = False

    async def start(self) -> ChatSession:
        """Read the persona's memory clock (its latest step + 1), so this session's memories follow the run's."""
        if self.memory is not None and not self._started:
            from personae.nodes.memory import memory_bases

            self.state["memory_base"] = await memory_bases(self.memory, [self.persona])
        self._started = True
        return self

    def _apply(self, update: dict[str, Any]) -> None:
        for key, value in update.items():
            self.state[key] = merge_by_id(self.state.get(key), value) if key == "transcript" else value  # type: ignore[literal-required]

    async def send(self, text: str) -> Utterance:
        """Commit the person's ``text`` and return the persona's reply (also committed)."""
        if not self._started:
            await self.start()
        if not text.strip():
            raise ValueError("an empty message")
        turn = len(self.state["transcript"])
        said = Utterance(id=utterance_id(self.conversation_id, turn), speaker=self.user.id, turn=turn, text=text.strip(),
                         metadata={"role": self.user.role, "human": True})
        self._apply({"transcript": [said.model_dump(mode="json")], "next_speaker": self.persona.id})
        self._apply(await self._speak(self.state, self._runtime))
        if self._observe is not None:
            self._apply(await self._observe(self.state, self._runtime))
        return transcript_of(self.state)[-1]

    @property
    def utterances(self) -> list[Utterance]:
        """The session so far."""
        return transcript_of(self.state)

    def conversation(self) -> Conversation:
        """The session as a complete :class:`Conversation` with ``metadata["kind"] == "chat"``."""
        utterances = self.utterances
        conversation = Conversation(
            id=self.conversation_id, scenario=self.scenario, participants=[self.persona, self.user], utterances=utterances,
            metrics=conversation_metrics(utterances),
            metadata={
                "kind": CHAT_KIND, "graph": "chat", "persona": self.persona.persona.id, "projection": self.graph.projection,
                "memory": self.memory is not None, "stop_detail": "the person ended the chat", **self.extra,
            },
        )
        conversation.transition(ConversationStatus.RUNNING)
        conversation.transition(ConversationStatus.COMPLETE)
        return conversation


def session_seed(run_seed: int, conversation_id: str) -> int:
    """The seed of a chat's persona calls, from the run's seed and the session id."""
    return derive_seed(run_seed, conversation_id, "chat")
