"""``personae testserver``: a local OpenAI-compatible test server, for trying graphs offline."""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``testserver`` command to ``app``."""

    @app.command("testserver")
    def testserver(
        ctx: typer.Context,
        port: int = typer.Option(8765, help="TCP port (0 picks a free one)."),
        host: str = typer.Option("127.0.0.1", help="Interface to bind."),
        latency: float = typer.Option(0.0, help="Seconds every reply waits."),
        fault_rate: float = typer.Option(0.0, help="Share of requests (0..1) that get an injected fault."),
        faults: str = typer.Option(
            "429,500,timeout,malformed,schema_invalid,truncated", help="Comma-separated fault kinds to draw from."
        ),
        retry_after: float | None = typer.Option(
            None, help="Retry-After seconds sent with injected 429s (the quota mode's 429s say their own wait)."
        ),
        hang: float = typer.Option(30.0, help="Longest a 'timeout' fault hangs before the connection is closed (s)."),
        reject_json_schema: bool = typer.Option(False, help="Answer response_format json_schema with HTTP 400."),
        reject_tools: bool = typer.Option(False, help="Answer requests with tools with HTTP 400."),
        seed: int = typer.Option(0, help="Seeds the replies and the fault draw."),
        embedding_dim: int = typer.Option(256, help="Embedding size (unless a request sets 'dimensions')."),
        quota_rpm: int | None = typer.Option(
            None, help="Quota mode: chat requests per minute; past it, HTTP 429 with Retry-After. Every reply carries "
            "OpenAI's x-ratelimit-{limit,remaining,reset}-requests headers.",
        ),
        quota_tpm: int | None = typer.Option(
            None, help="Quota mode: tokens per minute (prompt + max_tokens, settled to the real usage); past it, HTTP 429. "
            "Replies carry x-ratelimit-*-tokens headers.",
        ),
        quota_window: float = typer.Option(
            60.0, help="Quota mode: seconds of quota each bucket holds, the largest burst (60: a whole minute's quota at "
            "once; 1: enforced per second). The x-ratelimit-limit-* headers report this bucket, their reset its window.",
        ),
        simulate_prompt_cache: bool = typer.Option(
            False, help="Report usage.prompt_tokens_details.cached_tokens as a provider's prompt cache would: the tokens "
            "a request shares as a prefix with the previous request that began with the same first message.",
        ),
        hold_until_in_flight: int = typer.Option(
            0, help="Hold every reply until this many requests are in flight at once, then answer them all (0: off); "
            "shows whether a client really overlaps that many calls.",
        ),
        hold: float = typer.Option(60.0, help="Longest a reply waits for --hold-until-in-flight before it is answered anyway (s)."),
        embedding_formats: str = typer.Option(
            "float,base64", help="Comma-separated encoding_format values the embeddings endpoint accepts; another gets HTTP 400 "
            "(OpenAI accepts both; 'float' alone mimics a server without base64).",
        ),
        embedding_ignore_format: bool = typer.Option(
            False, help="Answer embeddings with float lists whatever encoding_format asks, as some OpenAI-compatible servers do.",
        ),
    ) -> None:
        """Serve a fake OpenAI-compatible API (chat, embeddings, models) until Ctrl-C.

        Replies are deterministic and JSON replies are schema-valid, but they are not
        language: this is a test double for the plumbing (retries, fallbacks, caching,
        concurrency, rate limits with --quota-rpm/--quota-tpm, prompt-cache accounting with
        --simulate-prompt-cache). Point personae at the printed URL with
        PERSONAE_LLM_BASE_URL=<url> PERSONAE_LLM_MODEL=test.
        """
        from personae.testing.server import config_from_options, serve_until_interrupted

        options = {k: v for k, v in ctx.params.items() if k not in ("port", "host")}
        config = config_from_options(**options)

        def announce(server) -> None:
            typer.echo(server.base_url)
            typer.echo("personae test server (fake replies) running; Ctrl-C to stop", err=True)

        serve_until_interrupted(config, port=port, host=host, on_ready=announce)
