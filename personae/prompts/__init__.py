"""Prompt templates live as files in this folder (``*.j2``), versioned by content hash.

Rendering uses a sandboxed Jinja2 environment with strict undefined variables.
Values are inserted as data and never rendered again, so persona text that looks
like template syntax (``{{ ... }}``) or like instructions stays inert text.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateNotFound, TemplateSyntaxError, nodes
from jinja2.sandbox import SandboxedEnvironment

from personae.errors import ConfigError
from personae.ids import content_hash

__all__ = ["PromptSet", "render", "render_with", "render_many_with", "default_prompts", "PROMPTS_DIR"]

PROMPTS_DIR = Path(__file__).parent
_SEPARATOR = "\x00"  # ends each row of a looped render; not in any template nor whitespace
_NOT_LOOPABLE = (nodes.Assign, nodes.AssignBlock, nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends, nodes.Macro, nodes.Block, nodes.CallBlock)


class PromptSet:
    """A set of templates: the packaged ones, optionally overridden from user folders."""

    def __init__(self, *override_dirs: str | os.PathLike) -> None:
        dirs = [Path(d) for d in override_dirs] + [PROMPTS_DIR]
        for d in dirs[:-1]:
            if not d.is_dir():
                raise ConfigError("prompt override folder not found", file=str(d), expected="a directory of *.j2 templates")
        self.dirs = dirs
        self._env = SandboxedEnvironment(
            loader=FileSystemLoader([str(d) for d in dirs]),
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,  # templates are fixed for a run; no stat() per render
        )
        self._env.filters["tojson_pretty"] = _tojson_pretty
        self._loops: dict[tuple[str, tuple[str, ...]], Template | None] = {}

    def source(self, name: str) -> str:
        """The template text of ``name`` (without the ``.j2`` suffix)."""
        try:
            src, _, _ = self._env.loader.get_source(self._env, f"{name}.j2")
        except TemplateNotFound:
            raise self._not_found(name) from None
        return src

    def _not_found(self, name: str) -> ConfigError:
        return ConfigError(f"no prompt template named {name!r}", field="prompt", expected=f"a file {name}.j2 in {[str(d) for d in self.dirs]}")

    def version(self, name: str) -> str:
        """Content hash of a template: the prompt version tracked with every run."""
        return content_hash(self.source(name), length=12)

    def versions(self) -> dict[str, str]:
        """Every known template name → version."""
        names = sorted({p.stem for d in self.dirs for p in d.glob("*.j2")})
        return {n: self.version(n) for n in names}

    def _template(self, name: str) -> Template:
        try:  # compiled once and cached by the environment (renders run on every turn)
            return self._env.get_template(f"{name}.j2")
        except TemplateNotFound:
            raise self._not_found(name) from None
        except TemplateSyntaxError as exc:
            raise ConfigError(
                f"prompt template {name!r} is not valid Jinja2: {exc.message}", file=exc.filename, line=exc.lineno,
                field=name, expected="a template that parses (see personae/prompts/*.j2)",
            ) from None

    def render_many(self, name: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """``[render(name, **row) for row in rows]``, in one template pass when it can be.

        Rows with the same keys are rendered by one loop over the template's own text
        (compiled once per template and key set), which saves the per-render setup that
        dominates a short template. Templates that assign variables, import, include,
        extend or define macros or blocks, and any batch that fails, are rendered one by
        one (so errors read as from :meth:`render`).
        """
        if not rows:
            return []
        keys = tuple(rows[0])
        loop = self._loop_template(name, keys) if all(isinstance(k, str) and k.isidentifier() for k in keys) else None
        if loop is not None and all(tuple(r) == keys for r in rows):
            try:
                parts = loop.render(__rows=[tuple(r.values()) for r in rows]).split(_SEPARATOR)
            except Exception:  # noqa: BLE001 - rendered again one by one, which raises the usual error
                parts = []
            if len(parts) == len(rows) + 1 and not parts[-1].strip():
                return [p.strip() for p in parts[:-1]]
        return [self.render(name, **r) for r in rows]

    def _loop_template(self, name: str, keys: tuple[str, ...]) -> Template | None:
        """The template ``name`` wrapped in a loop over rows of ``keys`` (``None``: not safe to loop)."""
        cache_key = (name, keys)
        if cache_key in self._loops:
            return self._loops[cache_key]
        source = self.source(name)
        loop = None
        try:
            tree = self._env.parse(source)
            if not any(True for _ in tree.find_all(_NOT_LOOPABLE)) and not _loop_outside_for(tree) and _SEPARATOR not in source:
                loop = self._env.from_string(f"{{% for {', '.join(keys)} in __rows %}}\n{source}{_SEPARATOR}{{% endfor %}}")
        except TemplateSyntaxError:
            loop = None  # render() reports it
        self._loops[cache_key] = loop
        return loop

    def render(self, name: str, /, **values: Any) -> str:
        """Render template ``name`` with ``values``; a missing value names the template."""
        template = self._template(name)
        try:
            return template.render(**values).strip()
        except Exception as exc:  # jinja's UndefinedError and friends
            raise ConfigError(
                f"cannot render prompt template {name!r}: {exc}", file=template.filename, line=_template_line(exc, template.filename),
                field=name, expected=f"only the values this template is given: {sorted(values)}",
            ) from None


def _loop_outside_for(node: nodes.Node, inside: bool = False) -> bool:
    """Whether the template reads ``loop`` outside a for loop (looped, it would see the wrapper's)."""
    if isinstance(node, nodes.Name) and node.name == "loop" and not inside:
        return True
    if isinstance(node, nodes.For):
        return any(_loop_outside_for(n, inside) for n in (node.target, node.iter)) or any(_loop_outside_for(n, True) for n in (*node.body, *node.else_, *([node.test] if node.test else [])))
    return any(_loop_outside_for(child, inside) for child in node.iter_child_nodes())


def _template_line(exc: BaseException, filename: str | None) -> int | None:
    """The line of the template where rendering failed (Jinja compiles templates to Python whose frames keep the template's file name and line)."""
    tb, line = exc.__traceback__, None
    while tb is not None:
        if filename and tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _tojson_pretty(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@functools.lru_cache(maxsize=1)
def default_prompts() -> PromptSet:
    """The packaged prompt set (built once; it is immutable)."""
    return PromptSet()


def render(name: str, /, **values: Any) -> str:
    """Render a packaged template."""
    return default_prompts().render(name, **values)


def render_with(prompts: PromptSet | None, name: str, values: Mapping[str, Any]) -> str:
    """Render with ``prompts`` or the packaged set."""
    return (prompts or default_prompts()).render(name, **values)


def render_many_with(prompts: PromptSet | None, name: str, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """:meth:`PromptSet.render_many` with ``prompts`` or the packaged set."""
    return (prompts or default_prompts()).render_many(name, rows)
