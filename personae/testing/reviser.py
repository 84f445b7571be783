"""A scripted persona reviser: a fake model answering ``survey_refine.j2`` prompts.

It reads the prompt's JSON evidence (train questions of one cell, answers by attribute
value, revisable attributes, the cell's personas) and proposes the mix of one revisable
attribute that best fits the cell's human answers (:func:`~personae.survey.revise.fit_mix`),
moving the fewest personas: the same arithmetic as
:class:`~personae.survey.revise.MixtureReviser`, but through a prompt and the gateway's
structured output, so tests exercise the model path. A fake, for tests and demos.

:meth:`ScriptedReviser.llm` answers revision prompts itself and passes every other request
to ``respondents`` (e.g. :class:`~personae.testing.respondents.ScriptedRespondents`), so
one gateway serves both the survey and the revisions. Every revision prompt it saw is in
:attr:`ScriptedReviser.prompts`.
"""

from __future__ import annotations

import json
from typing import Any

from personae.llm.base import LLMRequest
from personae.llm.testing import ScriptedLLM
from personae.survey.revise import fit_mix

__all__ = ["ScriptedReviser"]

_START, _END = "Evidence (JSON):\n", "\n\nPropose revisions"


class ScriptedReviser:
    """Revision proposals from the evidence in the prompt (a fake)."""

    def __init__(self, respondents: Any = None) -> None:
        self.respondents = respondents
        self.prompts: list[str] = []

    def answer(self, prompt: str) -> str:
        self.prompts.append(prompt)
        evidence = json.loads(prompt[prompt.index(_START) + len(_START): prompt.index(_END)])
        human = {q["id"]: q["human"] for q in evidence["questions"]}
        members = sorted(evidence["personas"], key=lambda p: p["id"])
        best = None
        for attribute, by_value in sorted(evidence["answers_by_attribute_value"].items()):
            if attribute in evidence["where"] or any(str(p["attributes"].get(attribute)) not in by_value for p in members):
                continue
            fit = fit_mix(len(members), by_value, human)
            current = {v: sum(str(p["attributes"].get(attribute)) == v for p in members) for v in by_value}
            if fit is not None and fit[0] != current and (best is None or fit[1] < best[2]):
                best = (attribute, fit[0], fit[1])
        revisions = []
        if best is not None:
            attribute, left, _ = best
            movers = []
            for persona in members:
                value = str(persona["attributes"].get(attribute))
                if left.get(value, 0) > 0:
                    left[value] -= 1
                else:
                    movers.append(persona)
            for persona in movers:
                value = next(v for v, c in sorted(left.items()) if c > 0)
                left[value] -= 1
                revisions.append({"persona_id": persona["id"], "attributes": [{"attribute": attribute, "value": value}],
                                  "description": None, "reason": f"fits the human answers of {evidence['cell']}"})
        return json.dumps({"revisions": revisions})

    def reply(self, body: dict[str, Any]) -> str | None:
        """The test server's reply function: revision prompts here, the rest to ``respondents.reply``."""
        response_format = body.get("response_format") or {}
        name = (response_format.get("json_schema") or {}).get("name") if isinstance(response_format, dict) else None
        for tool in body.get("tools") or []:
            name = name or ((tool or {}).get("function") or {}).get("name")
        if name == "PersonaRevisions":
            user = [str(m.get("content")) for m in body.get("messages") or [] if m.get("role") == "user"]
            return self.answer("\n".join(user))
        return self.respondents.reply(body) if self.respondents is not None else None

    def llm(self, *, model: str = "scripted-reviser") -> ScriptedLLM:
        """One fake model: revision prompts answered here, the rest by ``respondents.llm()``."""
        inner = self.respondents.llm() if self.respondents is not None else None

        async def script(request: LLMRequest) -> Any:
            if request.schema_name == "PersonaRevisions":
                return self.answer("\n".join(str(m.content) for m in request.messages if m.role == "user"))
            if inner is None:
                raise ValueError("ScriptedReviser got a non-revision request and has no respondents model")
            return await inner.complete(request)

        return ScriptedLLM(script, model=model)

