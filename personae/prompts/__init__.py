"""Prompt templates live as files in this folder (``*.j2``), versioned by content hash.

Rendering uses a sandboxed Jinja2 environment with strict undefined variables.
Values are inserted as data and never rendered again, so persona text that looks
like template syntax (``{{ ... }}``) or like instructions stays inert text.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from personae.errors import ConfigError
from personae.ids import content_hash

__all__ = ["PromptSet", "render", "default_prompts", "PROMPTS_DIR"]

PROMPTS_DIR = Path(__file__).parent


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

    def render(self, name: str, /, **values: Any) -> str:
        """Render template ``name`` with ``values``; a missing value names the template."""
        try:  # compiled once and cached by the environment (renders run on every turn)
            template = self._env.get_template(f"{name}.j2")
        except TemplateNotFound:
            raise self._not_found(name) from None
        except TemplateSyntaxError as exc:
            raise ConfigError(
                f"prompt template {name!r} is not valid Jinja2: {exc.message}", file=exc.filename, line=exc.lineno,
                field=name, expected="a template that parses (see personae/prompts/*.j2)",
            ) from None
        try:
            return template.render(**values).strip()
        except Exception as exc:  # jinja's UndefinedError and friends
            raise ConfigError(
                f"cannot render prompt template {name!r}: {exc}", file=template.filename, line=_template_line(exc, template.filename),
                field=name, expected=f"only the values this template is given: {sorted(values)}",
            ) from None


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
