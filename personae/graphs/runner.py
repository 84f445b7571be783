"""Running conversations: jobs, one conversation, and resumable concurrent batches.

Each conversation runs under LangGraph's checkpointer with ``thread_id = job.id``,
so a run killed mid-conversation resumes from its last step. A batch runs
conversations concurrently on asyncio (the gateway's limit caps model calls),
appends each finished conversation to a JSON Lines file, and skips ids already
there on a rerun. A conversation whose model calls fail for good is recorded as
``failed`` with its error and the turns it had, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from langgraph.errors import GraphRecursionError
from pydantic import BaseModel, ConfigDict, Field

from personae.embeddings.base import Embedder
from personae.errors import BudgetExceeded, ConfigError, ModelCallError, PersonaeError
from personae.graphs.checkpoint import checkpointed_threads, sqlite_checkpointer
from personae.graphs.config import GraphConfig, validate_conversation
from personae.graphs.pool import Processes, resolve_processes
from personae.graphs.prebuilt import build_graph, recursion_limit
from personae.graphs.sessions import Sessions
from personae.ids import stable_id
from personae.jsonl import append_jsonl, iter_jsonl, read_jsonl_dicts
from personae.llm.gateway import Gateway
from personae.llm.limits import Limits
from personae.models import Conversation, ConversationStatus, Participant, Persona, Scenario, StopReason, Utterance, is_event
from personae.nodes.orchestrator import pick_opener
from personae.nodes.state import DialogueState, RunContext, derive_seed, initial_state

__all__ = [
    "ConversationJob",
    "BatchResult",
    "make_jobs",
    "job_state",
    "run_conversation",
    "simulate_batch",
    "conversation_metrics",
    "completeness_problem",
    "done_ids",
    "latest_conversations",
]

log = logging.getLogger(__name__)


class ConversationJob(BaseModel):
    """One conversation to simulate: who, where, which graph, which seed."""

    model_config = ConfigDict(extra="forbid")

    id: str
    scenario: Scenario
    participants: list[Participant] = Field(min_length=1)
    graph: GraphConfig = Field(default_factory=GraphConfig)
    seed: int = 0
    session: int = Field(1, ge=1, description="which meeting of its group this is (1 without sessions): events may target one")
    group: str | None = Field(None, description="the group of participants meeting over several sessions (None: no sessions)")
    after: str | None = Field(None, description="id of the job (the group's previous session) that must be written before this one starts")
    clock_start: int = Field(0, ge=0, description="memory-clock step at which this session starts (simulated time)")
    start_s: float = Field(0.0, ge=0.0, description="simulated seconds since the group's first session began")
    reflect_first: bool = Field(False, description="participants reflect on their memories before the conversation starts")


class BatchResult(BaseModel):
    """What a batch did: conversations completed, failed and skipped (already done).

    ``failed_before`` counts the skipped ones recorded as failed by an earlier run (not
    retried without ``retry_failed``): the batch is whole only when ``unfinished`` is 0.
    """

    total: int
    completed: int
    failed: int
    skipped: int
    wall_s: float
    failed_before: int = 0
    blocked: int = 0
    processes: int = 1
    """Processes the batch ran in (1: the calling process; more: worker processes, see :mod:`personae.graphs.pool`)."""
    worker_cpu_s: float = 0.0
    """CPU seconds the worker processes spent on their parts (0 when the batch ran in the calling process)."""
    startup_s: float = 0.0
    """Seconds of the batch's wall time before its slowest worker process began its part (spawning and imports)."""

    @property
    def unfinished(self) -> int:
        """The batch's conversations not done: failed (this run's and earlier ones), or blocked.

        ``blocked`` counts later sessions not started because their group's previous session
        failed; they are not recorded, so a rerun (with ``retry_failed``) runs them.
        """
        return self.failed + self.failed_before + self.blocked


def _unique(personas: Sequence[Persona]) -> list[Persona]:
    """``personas`` as a list; two with the same id are an error, never silently one of them."""
    seen: dict[str, int] = {}
    for index, p in enumerate(personas):
        first = seen.setdefault(p.id, index)
        if first != index:
            raise ConfigError(
                f"personas #{first} and #{index} have the same id", field="personas", got=p.id,
                expected="one persona per id (an id derived from the content repeats when a persona is repeated)",
            )
    return list(personas)


def _cast(graph: GraphConfig, scenario: Scenario, personas: list[Persona], index: int, rng: random.Random) -> list[Participant]:
    roles = [r.name for r in scenario.roles]
    if graph.kind in ("dyad", "interview") and len(roles) < 2:
        raise ConfigError(f"a {graph.kind} scenario needs two roles", field="scenario.roles", expected="at least 2 roles", got=roles)
    first = personas[index % len(personas)]
    if graph.kind == "interview":
        return [
            Participant(persona=graph.default_interviewer(), role=roles[0]),
            Participant(persona=first, role=roles[1]),
        ]
    size = 2 if graph.kind == "dyad" else min(graph.group_size, len(personas))
    if len(personas) < size:
        raise ConfigError(f"a {graph.kind} needs {size} distinct personas", field="personas", expected=f">= {size}", got=len(personas))
    others = rng.sample([p for p in personas if p.id != first.id], size - 1)
    return [Participant(persona=p, role=roles[i % len(roles)]) for i, p in enumerate([first, *others])]


def _cast_group(graph: GraphConfig, scenario: Scenario, shuffled: list[Persona], index: int) -> list[Participant]:
    """Group ``index`` of a multi-session simulation: the next ``size`` personas of a seeded shuffle.

    Groups share no persona while the population allows (``groups × size <= personas``), so
    each group's memories are its own and a group's sessions replay the same whatever the
    others do; past that the shuffle wraps around and groups overlap.
    """
    if graph.kind == "interview":
        return _cast(graph, scenario, shuffled, index, random.Random(0))
    roles = [r.name for r in scenario.roles]
    if graph.kind == "dyad" and len(roles) < 2:
        raise ConfigError("a dyad scenario needs two roles", field="scenario.roles", expected="at least 2 roles", got=roles)
    size = 2 if graph.kind == "dyad" else min(graph.group_size, len(shuffled))
    if len(shuffled) < size:
        raise ConfigError(f"a {graph.kind} needs {size} distinct personas", field="personas", expected=f">= {size}", got=len(shuffled))
    members = [shuffled[(index * size + j) % len(shuffled)] for j in range(size)]
    return [Participant(persona=p, role=roles[j % len(roles)]) for j, p in enumerate(members)]


def make_jobs(
    personas: Sequence[Persona],
    scenarios: Sequence[Scenario],
    graph: GraphConfig,
    *,
    n_conversations: int,
    seed: int,
    sessions: Sessions | None = None,
) -> list[ConversationJob]:
    """Cast ``n_conversations`` conversations deterministically from ``seed``.

    Conversation ``i`` uses scenario ``i mod len(scenarios)``; persona ``i mod
    len(personas)`` takes the scenario's first role (so every persona is covered)
    and the other seats are drawn at random from the rest. Interviews pair the
    interviewer persona with each respondent. Ids derive from seed, index, cast and
    graph config, so the same call gives the same jobs.

    With ``sessions`` each of the ``n_conversations`` casts is a *group* meeting
    ``sessions.count`` times in the same scenario (groups are consecutive personas of a
    seeded shuffle, disjoint while the population allows): the jobs are session 1 of every group,
    then session 2, and so on, and each later session names the one before it in
    ``after`` (so a batch starts it only once that one is written), starts its memory
    clock ``sessions.gap_steps`` later and, with ``sessions.reflect``, lets the
    participants reflect first. Without it every conversation is session 1 of its own.
    """
    if n_conversations < 1:
        raise ConfigError("the number of conversations must be at least 1", field="n_conversations", got=n_conversations)
    if not scenarios:
        raise ConfigError("no scenarios given", field="scenarios", expected="at least one scenario")
    people = _unique(personas)
    if not people:
        raise ConfigError("no personas given", field="personas", expected="at least one persona")
    graph_key = graph.model_dump(mode="json")
    casts: list[tuple[Scenario, list[Participant]]] = []
    shuffled = random.Random(derive_seed(seed, "groups")).sample(people, len(people))
    for i in range(n_conversations):
        scenario = scenarios[i % len(scenarios)]
        if sessions is None:
            participants = _cast(graph, scenario, people, i, random.Random(derive_seed(seed, i, "cast")))
        else:
            participants = _cast_group(graph, scenario, shuffled, i)
        validate_conversation(graph, scenario, participants)
        casts.append((scenario, participants))
    if sessions is None:
        return [
            ConversationJob(
                id=stable_id("conv", seed, i, scenario.id, [p.id for p in participants], graph_key),
                scenario=scenario, participants=participants, graph=graph, seed=derive_seed(seed, i),
            )
            for i, (scenario, participants) in enumerate(casts)
        ]
    jobs: list[ConversationJob] = []
    previous: dict[int, str] = {}
    for session in range(1, sessions.count + 1):
        for i, (scenario, participants) in enumerate(casts):
            cast = [p.id for p in participants]
            job_id = stable_id("conv", seed, i, scenario.id, cast, graph_key, "session", session)
            jobs.append(ConversationJob(
                id=job_id, scenario=scenario, participants=participants, graph=graph, seed=derive_seed(seed, i, session),
                session=session, group=stable_id("group", seed, i, scenario.id, cast), after=previous.get(i),
                clock_start=sessions.start_step(session), start_s=sessions.start_s(session),
                reflect_first=sessions.reflect and session > 1,
            ))
            previous[i] = job_id
    return jobs


def job_state(job: ConversationJob, *, memory_base: dict[str, int] | None = None) -> DialogueState:
    """The initial graph state of ``job``."""
    interviewer = None
    if job.graph.kind == "interview":
        interviewer = pick_opener(job.participants, job.scenario, job.graph.opener).id
    return initial_state(
        job.scenario,
        job.participants,
        questions=job.graph.questions if job.graph.kind == "interview" else (),
        interviewer=interviewer,
        memory_base=memory_base,
    )


def conversation_metrics(utterances: Sequence[Utterance]) -> dict[str, float]:
    """Turns, persona tokens and critic activity of a transcript (injected events are counted apart, as ``events``)."""
    events = sum(1 for u in utterances if is_event(u))
    utterances = [u for u in utterances if not is_event(u)]
    usage = [u.metadata.get("usage") or {} for u in utterances]
    critic = [u.metadata.get("critic") for u in utterances if u.metadata.get("critic")]
    return {
        "turns": len(utterances),
        "prompt_tokens": sum(int(x.get("prompt_tokens", 0)) for x in usage),
        "completion_tokens": sum(int(x.get("completion_tokens", 0)) for x in usage),
        "cached_prompt_tokens": sum(int(x.get("cached_tokens", 0)) for x in usage),
        "critic_reviewed": len(critic),
        "critic_judged": sum(bool(c.get("llm")) for c in critic),
        "critic_revisions": sum(max(0, int(c.get("attempts", 1)) - 1) for c in critic),
        "critic_gave_up": sum(1 for c in critic if c.get("verdict") == "gave_up"),
        "mean_chars": sum(len(u.text) for u in utterances) / len(utterances) if utterances else 0.0,
        **({"events": events} if events else {}),
    }


def completeness_problem(utterances: Sequence[Utterance], *, stop_reason: str | None, checkpointed: int = 0) -> str | None:
    """Why a transcript cannot be a finished conversation, or ``None`` when it can.

    A conversation is written ``complete`` only if its transcript is non-empty, its turns
    are numbered 0, 1, 2, ... without a gap or a repeat, it holds at least the
    ``checkpointed`` utterances its checkpoint already had when the run (or resume)
    started, and its graph ended through a decision to stop (``stop_reason``: every graph
    ends through a termination node or the interview's last question). Anything else
    means turns were lost on the way (a misread checkpoint, a bad resume), and recording
    that as success would be data loss recorded as success.
    """
    if not utterances:
        return "the transcript is empty"
    turns = [u.turn for u in utterances]
    if turns != list(range(len(turns))):
        gaps = sorted(set(range(max(turns) + 1)) - set(turns))
        return f"its turn numbers are not 0..{len(turns) - 1} in order (missing {gaps[:10]}, got {turns[:20]})"
    if len(utterances) < checkpointed:
        return f"it holds {len(utterances)} utterances but its checkpoint already had {checkpointed}"
    if not stop_reason:
        return f"its graph ended after {len(utterances)} turns without a stop reason"
    return None


def _conversation(
    job: ConversationJob, values: dict[str, Any], *, error: str | None = None, error_type: str | None = None, checkpointed: int = 0,
) -> Conversation:
    utterances = [Utterance.model_validate(u) for u in values.get("transcript") or []]
    problem = None if error is not None else completeness_problem(utterances, stop_reason=values.get("stop_reason"), checkpointed=checkpointed)
    if problem is not None:
        log.error("conversation %s finished but cannot be written complete: %s; it is recorded failed and its checkpoint kept", job.id, problem)
        error = f"IncompleteConversation: {problem} (its checkpoint is kept; rerun with retry_failed to redo it)"
        error_type = "IncompleteConversation"
    metadata: dict[str, Any] = {
        "graph": job.graph.kind,
        "projection": job.graph.projection,
        "turn_policy": job.graph.policy,
        "seed": job.seed,
        "stop_detail": values.get("stop_detail"),
    }
    if job.graph.events or job.group is not None:
        metadata["session"] = job.session
    if job.group is not None:
        metadata["group"] = job.group
        metadata["simulated_start_s"] = job.start_s
    if job.graph.events:
        metadata["events"] = [u.id for u in utterances if is_event(u)]
    for key in ("qa", "extracted", "extract_error"):
        if key in values:
            metadata[key] = values[key]
    if error_type is not None:
        metadata["error_type"] = error_type
    conversation = Conversation(
        id=job.id, scenario=job.scenario, participants=job.participants, utterances=utterances,
        metrics=conversation_metrics(utterances), metadata=metadata,
    )
    conversation.transition(ConversationStatus.RUNNING)
    if error is None:
        conversation.transition(ConversationStatus.COMPLETE)
        conversation.stop_reason = StopReason(values["stop_reason"]) if values.get("stop_reason") else None
    else:
        conversation.transition(ConversationStatus.FAILED)
        conversation.stop_reason = StopReason.ERROR
        conversation.error = error
    return conversation


async def run_conversation(
    job: ConversationJob,
    *,
    gateway: Gateway,
    embedder: Embedder | None = None,
    memory: Any = None,
    checkpointer: Any = None,
    graph: Any = None,
    prompts: Any = None,
    answer_schema: type[BaseModel] | None = None,
) -> Conversation:
    """Simulate ``job`` and return the conversation (``complete``, or ``failed`` with its error).

    With a checkpointer (given, or the one ``graph`` was compiled with) the run is
    resumable: a thread already holding a half-done conversation continues from its
    last step, a finished one is returned as is. :class:`BudgetExceeded` and
    :class:`ConfigError` (e.g. a broken prompt template: every conversation would fail
    the same way) propagate, since the batch must stop; other personae errors (a model
    failing for good, an unusable reply) and running past the step limit mark the
    conversation failed, with the error's type in ``metadata["error_type"]``; anything
    else is a bug and propagates.
    """
    if graph is None:
        graph = build_graph(
            job.graph, gateway=gateway, embedder=embedder, memory=memory, prompts=prompts,
            checkpointer=checkpointer, answer_schema=answer_schema,
        )
    persistent = getattr(graph, "checkpointer", None) is not None
    config = {"configurable": {"thread_id": job.id}, "recursion_limit": recursion_limit(job.graph, job.scenario.max_turns)}
    context = RunContext(conversation_id=job.id, seed=job.seed, session=job.session, group=job.group)
    checkpointed = 0
    try:
        snapshot = await graph.aget_state(config) if persistent else None
        if snapshot is not None and snapshot.values:
            checkpointed = len(snapshot.values.get("transcript") or [])
        if snapshot is not None and _finished(snapshot):
            log.debug("%s already finished in the checkpoint", job.id)
            return _conversation(job, dict(snapshot.values), checkpointed=checkpointed)
        if snapshot is not None and snapshot.values:
            log.info("resuming %s at %d turns (next: %s)", job.id, checkpointed, [t.name for t in snapshot.tasks])
            payload = None
        else:
            payload = job_state(job, memory_base=await _memory_base(job, memory, gateway))
        options = {"durability": job.graph.durability} if persistent else {}
        values = await graph.ainvoke(payload, config, context=context, **options)
    except (BudgetExceeded, ConfigError):
        raise
    except (PersonaeError, GraphRecursionError) as exc:  # recorded with its error; the batch goes on
        log.warning("conversation %s failed: %s: %s", job.id, type(exc).__name__, exc)
        partial = {}
        if persistent:
            try:
                partial = dict((await graph.aget_state(config)).values)
            except Exception as state_exc:  # the checkpointer itself may be what failed
                log.warning("could not read the partial state of %s: %s", job.id, state_exc)
        return _conversation(job, partial, error=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
    return _conversation(job, dict(values), checkpointed=checkpointed)


def _finished(snapshot: Any) -> bool:
    """Whether a checkpointed conversation has reached the end of its graph.

    A finished thread's latest checkpoint has values and no task left in its step.
    ``StateSnapshot.next`` alone misleads: it lists only tasks that still have to run, so
    a process killed after every task of a step saved its writes but before LangGraph
    wrote the next checkpoint leaves ``next == ()`` mid-conversation (even before the
    first turn). Those finished tasks are still in ``snapshot.tasks``, and resuming
    applies their writes and goes on.
    """
    return bool(snapshot.values) and not snapshot.tasks


async def _memory_base(job: ConversationJob, memory: Any, gateway: Gateway) -> dict[str, int] | None:
    """Each participant's memory-clock base, after the reflection a later session starts with.

    A kill between the reflection and the first checkpoint is harmless: the reflection
    covered what it reflected on, so the rerun finds nothing due and takes the bases after it.
    """
    if memory is None or not job.graph.memory.enabled:
        return None
    from personae.nodes.memory import memory_bases, reflect_all

    if job.reflect_first and job.graph.memory.reflect:
        await reflect_all(memory, gateway, job.participants, start=job.clock_start, seed=job.seed, conversation_id=job.id)
    return await memory_bases(memory, job.participants, start=job.clock_start)


def _recorded_status(out_path: Path) -> dict[str, str]:
    """Id → status of the latest record of each conversation in a batch output file."""
    if not out_path.exists():
        return {}
    return {record["id"]: record.get("status") for _, record in read_jsonl_dicts(out_path) if "id" in record}


def done_ids(path: str | Path, *, retry_failed: bool = False) -> set[str]:
    """Ids of the conversations a batch output file already holds, judged by each id's latest record.

    With ``retry_failed`` only the complete ones count (a retried failure is appended
    again, so the latest record is what holds). A missing file holds nothing.
    """
    recorded = _recorded_status(Path(path))
    if not retry_failed:
        return set(recorded)
    return {i for i, status in recorded.items() if status == ConversationStatus.COMPLETE.value}


def latest_conversations(path: str | Path) -> list[Conversation]:
    """Conversations in a batch output file, the latest record per id, in first-seen order.

    This is how every reader of a ``conversations.jsonl`` gets its conversations: a rerun
    with ``retry_failed`` appends a retried failure again, so the file may hold an id's
    stale ``failed`` record before its current one.
    """
    latest: dict[str, Conversation] = {}
    for conversation in iter_jsonl(path, Conversation):
        latest[conversation.id] = conversation
    return list(latest.values())


BATCH_GC_THRESHOLD = 50_000
"""Young-generation threshold of the cyclic garbage collector in a batch's worker processes, and for
``simulate_batch(gc_threshold=...)`` (see :func:`simulate_batch`)."""


async def simulate_batch(
    jobs: Sequence[ConversationJob],
    *,
    gateway: Gateway,
    out_path: Path,
    checkpoint_path: Path | None,
    embedder: Embedder | None = None,
    memory: Any = None,
    concurrency: int = 64,
    on_done: Callable[[Conversation], None] | None = None,
    retry_failed: bool = False,
    prompts: Any = None,
    answer_schema: type[BaseModel] | None = None,
    max_consecutive_failures: int | None = 10,
    gc_threshold: int | None = None,
    graph_factory: Callable[[Any], Any] | None = None,
    processes: Processes = 1,
    gateway_factory: Callable[[Limits], Gateway] | None = None,
) -> BatchResult:
    """Run ``jobs`` concurrently; append each finished conversation to ``out_path``.

    Jobs whose id is already in ``out_path`` are skipped (failed ones are rerun when
    ``retry_failed``; :func:`latest_conversations` then reads the newest record).
    With ``checkpoint_path`` every conversation is checkpointed to SQLite under its
    id, so a killed batch resumes mid-conversation; a conversation's checkpoint is
    deleted once it is complete and written out.

    When ``max_consecutive_failures`` conversations in a row fail while no model call
    succeeds (a dead endpoint), the batch stops with :class:`ModelCallError` naming the
    last error instead of burning through every job; what finished is written, in-flight
    conversations stay in their checkpoints, and a rerun resumes.

    ``processes`` > 1 (or ``"auto"``: see :func:`personae.graphs.pool.resolve_processes`)
    spreads the jobs over that many spawned worker processes, one event loop each, under
    one limit of calls in flight per endpoint shared by all of them (the limits of
    ``gateway``'s endpoints; see :mod:`personae.graphs.pool`). Each worker builds its own
    gateway with ``gateway_factory(limits)``, which must pickle (a module-level function or
    a ``functools.partial`` of one), as must ``embedder``, ``prompts``, ``answer_schema``
    and ``graph_factory``; their usage is added to ``gateway.usage``. ``memory`` (an
    in-process store) and ``on_done`` (a callback) need ``processes=1``.

    ``gc_threshold`` (opt-in) makes Python's cyclic garbage collector run its young-generation
    pass after that many net allocations instead of the interpreter's 700 while the batch
    runs in this process (restored afterwards). Hundreds of live conversations allocate fast,
    and with the default the collector takes a large share of the event loop's CPU
    (bench/scaling.py measures it). It changes a process-wide setting, so a library call
    does not make it unasked; worker processes, which personae owns, always run with
    :data:`BATCH_GC_THRESHOLD`. Objects are still freed by reference counting as before;
    only cycles wait a little longer.

    ``graph_factory(checkpointer)`` builds the compiled graph every job runs on instead of
    the prebuilt graph its config names (e.g. :func:`personae.survey.survey_graph`).
    """
    if concurrency < 1:
        raise ConfigError("concurrency must be at least 1", field="concurrency", got=concurrency)
    started = time.perf_counter()
    out_path = Path(out_path)
    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        raise ConfigError("job ids must be unique", field="jobs", got=len(ids) - len(set(ids)))
    recorded = _recorded_status(out_path)
    complete = {i for i, status in recorded.items() if status == ConversationStatus.COMPLETE.value}
    done = complete if retry_failed else set(recorded)
    todo = [j for j in jobs if j.id not in done]
    failed_before = sum(1 for j in jobs if j.id in done and j.id not in complete)  # recorded failed, not retried
    waiting = {j.id for j in todo}
    orphans = sorted({j.after for j in todo if j.after is not None and j.after not in waiting and j.after not in recorded})
    if orphans:
        raise ConfigError(
            "a session must follow its group's previous session, which is neither in this batch nor recorded",
            field="jobs.after", expected=f"the previous sessions in the batch or in {out_path}", got=orphans[:5],
        )
    workers = resolve_processes(processes, len(todo))
    if workers > 1:
        return await _in_processes(
            jobs, workers, gateway=gateway, gateway_factory=gateway_factory, memory=memory, on_done=on_done, options={
                "out_path": out_path, "checkpoint_path": checkpoint_path, "embedder": embedder, "concurrency": concurrency,
                "retry_failed": retry_failed, "prompts": prompts, "answer_schema": answer_schema,
                "max_consecutive_failures": max_consecutive_failures, "graph_factory": graph_factory,
            },
        )
    prior = {i: status == ConversationStatus.COMPLETE.value for i, status in recorded.items()}
    counts = {"completed": 0, "failed": 0, "blocked": 0}
    if checkpoint_path is not None and (todo or Path(checkpoint_path).exists()):
        async with sqlite_checkpointer(checkpoint_path) as saver:
            for thread_id in await checkpointed_threads(saver) & complete & set(ids):
                # written out, then killed before its checkpoint was deleted
                await _forget_checkpoint(saver, thread_id)
            if todo:
                with _fewer_gc_passes(gc_threshold):
                    await _run_all(todo, saver, gateway, out_path, embedder, memory, concurrency, on_done, counts, prompts, answer_schema, max_consecutive_failures, graph_factory, prior)
    elif todo:
        with _fewer_gc_passes(gc_threshold):
            await _run_all(todo, None, gateway, out_path, embedder, memory, concurrency, on_done, counts, prompts, answer_schema, max_consecutive_failures, graph_factory, prior)
    return BatchResult(
        total=len(jobs), completed=counts["completed"], failed=counts["failed"],
        skipped=len(jobs) - len(todo), wall_s=time.perf_counter() - started, failed_before=failed_before,
        blocked=counts["blocked"],
    )


async def _in_processes(
    jobs: Sequence[ConversationJob], workers: int, *, gateway: Gateway, gateway_factory: Callable[[Limits], Gateway] | None,
    memory: Any, on_done: Callable[[Conversation], None] | None, options: dict[str, Any],
) -> BatchResult:
    """The batch over ``workers`` worker processes (:mod:`personae.graphs.pool`), after checking it can go there."""
    from personae.graphs.pool import simulate_in_processes

    if gateway_factory is None:
        raise ConfigError(
            "a batch in several processes needs gateway_factory: a live gateway cannot be shared between processes",
            field="gateway_factory", expected="a picklable callable taking the worker's Limits and returning a Gateway",
        )
    if memory is not None:
        raise ConfigError(
            "memory is an in-process store: run a batch with memory in one process (processes=1)", field="processes",
            expected="1 with memory", got=workers,
        )
    if on_done is not None:
        raise ConfigError("on_done is called in the batch's process: it needs processes=1", field="on_done", got=workers)
    return await simulate_in_processes(jobs, processes=workers, gateway=gateway, gateway_factory=gateway_factory, options=options)


class _RaisedGcThreshold:
    """Batches running at once in this process (e.g. a flow's shards on a thread pool) and what they raised.

    The collector's setting is process-wide, so this bookkeeping is too: the first batch raises
    the threshold and the last one to finish restores it, so a shard that ends early does not
    slow down the ones still running.
    """

    lock = threading.Lock()
    active = 0
    raised_to: int | None = None
    before: tuple[int, int, int] = (700, 10, 10)


@contextlib.contextmanager
def _fewer_gc_passes(threshold: int | None) -> Iterator[None]:
    """Raise the collector's young-generation threshold to ``threshold`` while any batch runs, then restore it.

    Only ever raises it, and restores only what it set: a user's higher setting, or one made
    while batches run, is left alone.
    """
    if threshold is None:
        yield
        return
    state = _RaisedGcThreshold
    with state.lock:
        if state.active == 0:
            state.before = gc.get_threshold()
            state.raised_to = threshold if threshold > state.before[0] else None
            if state.raised_to is not None:
                gc.set_threshold(threshold, *state.before[1:])
        state.active += 1
    try:
        yield
    finally:
        with state.lock:
            state.active -= 1
            if state.active == 0 and state.raised_to is not None and gc.get_threshold()[0] == state.raised_to:
                gc.set_threshold(*state.before)


async def _forget_checkpoint(saver: Any, thread_id: str) -> None:
    """Drop a finished conversation's checkpoints; failing to is harmless, so never fatal.

    The conversation is already appended to the output, and reruns skip ids found
    there, so a checkpoint left behind (e.g. SQLite busy after an aborted batch) only
    costs disk space.
    """
    try:
        await saver.adelete_thread(thread_id)
    except sqlite3.OperationalError as exc:
        log.warning("could not delete the finished checkpoint of %s (%s); it is unused and harmless", thread_id, exc)


async def _run_all(
    jobs: Sequence[ConversationJob],
    saver: Any,
    gateway: Gateway,
    out_path: Path,
    embedder: Embedder | None,
    memory: Any,
    concurrency: int,
    on_done: Callable[[Conversation], None] | None,
    counts: dict[str, int],
    prompts: Any,
    answer_schema: type[BaseModel] | None,
    max_consecutive_failures: int | None = None,
    graph_factory: Callable[[Any], Any] | None = None,
    prior: dict[str, bool] | None = None,
) -> None:
    graphs: dict[str, Any] = {}
    limit = asyncio.Semaphore(concurrency)
    # a later session waits (holding no concurrency slot) until its group's previous one is written
    written = {job.id: asyncio.Event() for job in jobs}
    outcome: dict[str, bool] = dict(prior or {})  # id -> written complete
    # conversations failed by a model call (ModelCallError) since a call last succeeded: finished
    # order favours failures (they end early), so a streak only counts while the model answers
    # nothing at all, and other failures (an unusable reply, the step limit) never count
    streak, answered = 0, gateway.usage.total().calls

    def graph_for(job: ConversationJob) -> Any:
        key = job.graph.model_dump_json()
        if key not in graphs and graph_factory is not None:
            graphs[key] = graph_factory(saver)
        if key not in graphs:
            graphs[key] = build_graph(
                job.graph, gateway=gateway, embedder=embedder, memory=memory, prompts=prompts,
                checkpointer=saver, answer_schema=answer_schema,
            )
        return graphs[key]

    async def one(job: ConversationJob) -> None:
        # the event is set only when a job ends normally: an error stopping the batch cancels the waiters
        if job.after is not None:
            if job.after in written:
                await written[job.after].wait()
            if not outcome.get(job.after, False):
                log.warning("%s (session %d) not started: the previous session %s did not complete", job.id, job.session, job.after)
                counts["blocked"] += 1
                written[job.id].set()
                return
        await run(job)
        written[job.id].set()

    async def run(job: ConversationJob) -> None:
        async with limit:
            conversation = await run_conversation(job, gateway=gateway, embedder=embedder, memory=memory, graph=graph_for(job))
            await asyncio.to_thread(append_jsonl, out_path, [conversation])
            ok = conversation.status is ConversationStatus.COMPLETE
            outcome[job.id] = ok
            counts["completed" if ok else "failed"] += 1
            if ok and saver is not None:
                await _forget_checkpoint(saver, job.id)
        if on_done is not None:
            on_done(conversation)
        nonlocal streak, answered
        calls = gateway.usage.total().calls
        if ok or conversation.metadata.get("error_type") != ModelCallError.__name__:
            streak = 0
        else:
            streak = 1 if calls > answered else streak + 1
        answered = calls
        if max_consecutive_failures is not None and streak >= max_consecutive_failures:
            raise ModelCallError(
                f"stopping the batch: {streak} conversations in a row failed while the model answered no call; "
                f"the last with {conversation.error}. "
                f"Failed conversations are recorded in {out_path}; fix the cause (is the model endpoint up?), "
                "then rerun with retry_failed to resume"
            )

    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(one(job))
    except BaseExceptionGroup as eg:  # surface the first real error, e.g. BudgetExceeded
        raise eg.exceptions[0] from None
