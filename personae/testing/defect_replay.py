"""Replaying reference dialogues with injected defects through the live graph (a test harness, not a model).

It measures what the critic's judge gating costs in vigilance. Every reference
dialogue (``personae/data/reference``) is run again as a dyad through the real graph,
persona → critic → termination, against :class:`DefectReplayLLM`, a fake that

* as the persona, drafts the reference dialogue's own turn, except at the turns where
  :func:`personae.evaluation.validation.inject` (the metric-validation harness) put a
  defect: there the first draft is the defective text and any revision the original;
* as the critic's judge, is an oracle: it rejects exactly the defective drafts;
* as the end detector, never ends the conversation (the rules still may), whether asked
  on its own or together with the judge's question (``fold_into_critic``).

So judging every draft catches every defect, and the share of them a gated critic
still catches is its recall against judging every turn. Which defects the cheap risk
signals see is not built into the fake: the texts are the reference dialogues' and
the validation harness's, measured by signals written without looking at which turns
were changed.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personae.evaluation.validation import Defect, inject, reference_dialogues
from personae.graphs import ConversationJob, GraphConfig, latest_conversations, simulate_batch
from personae.embeddings.base import Embedder
from personae.llm.base import LLMRequest, ResponseFormat
from personae.llm.gateway import Gateway
from personae.llm.testing import _RecordingLLM
from personae.models import Conversation
from personae.nodes.critic import CriticConfig
from personae.nodes.state import derive_seed
from personae.nodes.termination import TerminationConfig

__all__ = ["DRAFT_DEFECTS", "DefectReplayLLM", "replay_jobs", "run_arm"]

DRAFT_DEFECTS: tuple[Defect, ...] = (
    Defect.ECHO_VERBATIM, Defect.ECHO_PARAPHRASE, Defect.REPETITION, Defect.SPEAKER_SWAP, Defect.PERSONA_DRIFT, Defect.OFF_SCENARIO,
)
"""The validation harness's defects that live in one turn (monopoly is a property of the whole conversation)."""

_MAX_ATTEMPTS = 3


def replay_jobs(
    references: Sequence[Conversation], kind: Defect | None, *, dose: float, seed: int, critic: CriticConfig,
    termination: TerminationConfig | None = None,
) -> tuple[list[ConversationJob], dict[tuple[str, int], str], dict[str, Conversation]]:
    """Jobs replaying ``references`` with ``kind`` injected at ``dose`` (None: clean), the defective
    texts by ``(job id, turn)``, and the reference behind each job."""
    injected = inject(references, kind, dose, seed=seed) if kind is not None else list(references)
    jobs, defects, behind = [], {}, {}
    for ref, copy in zip(references, injected):
        turns = sorted(ref.utterances, key=lambda u: u.turn)
        bad = sorted(copy.utterances, key=lambda u: u.turn)
        job_id = f"{ref.id}:{kind.value if kind else 'clean'}"
        for t, (a, b) in enumerate(zip(turns, bad)):
            if a.text != b.text:
                defects[(job_id, t)] = b.text
        graph = GraphConfig(
            kind="dyad", opener=turns[0].speaker, window=None, critic=critic.model_copy(update={"max_attempts": _MAX_ATTEMPTS}),
            termination=termination or TerminationConfig(max_turns=len(turns)),
        )
        if graph.termination.max_turns is None:
            graph.termination = graph.termination.model_copy(update={"max_turns": len(turns)})
        scenario = ref.scenario.model_copy(update={"max_turns": len(turns)})
        jobs.append(ConversationJob(id=job_id, scenario=scenario, participants=ref.participants, graph=graph, seed=seed))
        behind[job_id] = ref
    return jobs, defects, behind


class DefectReplayLLM(_RecordingLLM):
    """The fake behind :func:`run_arm` (see the module docstring). A fake: it reads the
    turn and attempt of each request from its seed, which the nodes derive from them."""

    def __init__(self, jobs: Sequence[ConversationJob], defects: dict[tuple[str, int], str], behind: dict[str, Conversation]) -> None:
        super().__init__("defect-replay", 0.0)
        self.defects = defects
        self._by_seed: dict[int, tuple[str, str, int, int]] = {}
        self._texts: dict[tuple[str, int], str] = {}
        for job in jobs:
            turns = sorted(behind[job.id].utterances, key=lambda u: u.turn)
            for t, u in enumerate(turns):
                self._texts[(job.id, t)] = u.text
                for attempt in range(_MAX_ATTEMPTS):
                    self._by_seed[derive_seed(job.seed, job.id, t, attempt)] = ("persona", job.id, t, attempt)
                    self._by_seed[derive_seed(job.seed, job.id, t, attempt, "critic")] = ("critic", job.id, t, attempt)
            for n in range(len(turns) + 1):
                self._by_seed[derive_seed(job.seed, job.id, n, "termination")] = ("termination", job.id, n, 0)
        self.judged: list[tuple[str, int, int]] = []

    async def complete(self, request: LLMRequest):  # noqa: D102
        self.requests.append(request)
        what, job, turn, attempt = self._by_seed[request.seed]
        defective = attempt == 0 and (job, turn) in self.defects
        if what == "persona":
            return self._response(request, self.defects[(job, turn)] if defective else self._texts[(job, turn)])
        if request.response_format is ResponseFormat.TEXT:
            raise AssertionError(f"unexpected text request for {what}")
        if what == "critic":
            self.judged.append((job, turn, attempt))
            verdict = {"in_character": not defective, "role_consistent": True, "follows_constraints": True,
                       "issues": ["out of character"] if defective else [], "feedback": "Say it as yourself." if defective else ""}
            if "ended" in ((request.json_schema or {}).get("properties") or {}):  # the end question folded into the judge's call
                verdict |= {"ended": False, "end_reason": "still going"}
            return self._response(request, json.dumps(verdict))
        return self._response(request, json.dumps({"ended": False, "reason": "still going"}))


async def run_arm(
    references: Sequence[Conversation] | None = None,
    *,
    critic: CriticConfig,
    kinds: Sequence[Defect | None] = (None, *DRAFT_DEFECTS),
    dose: float = 0.2,
    seed: int = 0,
    embedder: Embedder | None = None,
    termination: TerminationConfig | None = None,
    concurrency: int = 16,
) -> dict[str, Any]:
    """Replay ``references`` (the shipped reference dialogues by default) once per kind in
    ``kinds`` (None = clean) with ``critic``; count calls, utterances and caught defects."""
    references = list(references if references is not None else reference_dialogues())
    out: dict[str, Any] = {"kinds": {}}
    for kind in kinds:
        jobs, defects, behind = replay_jobs(references, kind, dose=dose, seed=seed, critic=critic, termination=termination)
        fake = DefectReplayLLM(jobs, defects, behind)
        gateway = Gateway(fake, cache=None)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "out.jsonl"
            await simulate_batch(jobs, gateway=gateway, out_path=path, checkpoint_path=None, embedder=embedder, concurrency=concurrency)
            conversations = latest_conversations(path)
        committed = {(c.id, u.turn): u for c in conversations for u in c.utterances}
        reached = {key: text for key, text in defects.items() if key in committed}  # a conversation may end before a defect's turn
        caught = {key for key, text in reached.items() if committed[key].text != text}
        by_rules = {key for key in caught if (committed[key].metadata.get("critic", {}).get("history") or [{}])[0].get("source") == "rules"}
        snap = gateway.usage.snapshot()
        utterances = len(committed)
        calls_by_job = Counter(fake._by_seed[r.seed][1] for r in fake.requests)
        utterances_by_job = Counter(job for job, _ in committed)
        why = Counter()
        for u in committed.values():
            for entry in [*(u.metadata.get("critic", {}).get("history") or []), u.metadata.get("critic", {})]:
                gate = entry.get("judge") if isinstance(entry, dict) else None
                if gate:
                    why[("judged: " if gate["judge"] else "skipped: ") + gate["why"][0].split(" ")[0].rstrip(":")] += 1
        out["kinds"][kind.value if kind else "clean"] = {
            "conversations": len(conversations),
            "utterances": utterances,
            "model_calls": snap["total.model_calls"],
            "calls_by_role": {r: snap.get(f"{r}.model_calls", 0) for r in ("persona", "critic", "termination")},
            "end_asked_by_critic": sum(1 for u in committed.values() if "end" in (u.metadata.get("critic") or {})),
            "calls_per_utterance": snap["total.model_calls"] / utterances if utterances else None,
            "defects": len(reached),
            "caught": sorted(f"{j}@{t}" for j, t in caught),
            "caught_by_rules": len(by_rules),
            "caught_by_rules_at": sorted(f"{j}@{t}" for j, t in by_rules),
            "reached": sorted(f"{j}@{t}" for j, t in reached),
            "by_conversation": {job: {"model_calls": calls_by_job[job], "utterances": utterances_by_job[job]} for job in sorted(utterances_by_job)},
            "caught_by_judge": len(caught - by_rules),
            "gate": dict(sorted(why.items())),
        }
        await gateway.aclose()
    return out
