"""A fast fake of vLLM's OpenAI-compatible server, for unit tests and client benchmarks.

Pure stdlib asyncio (no vLLM, no web framework), so the unit suite runs anywhere and the
server's own CPU cost stays small. It streams chunks in vLLM's exact shape (one SSE event per
HTTP chunk, a trailing usage chunk when ``stream_options.include_usage`` is set, ``[DONE]``),
serves ``/metrics`` with the ``vllm:`` series pytest-forge reads, and has knobs for the
failures the bench must survive.

In-process::

    with running_fake_server(token_delay_s=0.001, fail_every=5) as server:
        ...  # server.url, server.stats

Standalone (e.g. so its CPU is not counted against a client)::

    python tests/fakes/fake_openai_server.py --port 8123 --token-delay-s 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

MODEL = "fake-model"
VERSION = "0.0.0-fake"

_WORDS = ("the", "model", "serves", "tokens", "from", "a", "cache", "of", "keys")


def default_output_text(prompt: str, n_tokens: int) -> list[str]:
    """Token texts for ``prompt``: deterministic per prompt, so agreement scoring is stable."""
    rng = random.Random(zlib.crc32(prompt.encode()))
    return [" " + rng.choice(_WORDS) for _ in range(n_tokens)]


@dataclass
class FakeStats:
    """What the fake saw; written by the server thread, read by tests after a run."""

    requests: int = 0  # generation requests (completions + chat), including failed ones
    in_flight: int = 0
    max_in_flight: int = 0
    arrivals: list[float] = field(default_factory=list)  # time.perf_counter() at receipt
    payloads: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # of generation requests
    control_paths: list[str] = field(default_factory=list)  # every other request
    auth_headers: list[str | None] = field(default_factory=list)
    reset_calls: int = 0
    metrics_calls: int = 0
    models_calls: int = 0
    failed: int = 0
    dropped: int = 0


@dataclass
class Knobs:
    token_delay_s: float = 0.0  # between streamed tokens
    ttft_delay_s: float = 0.0  # before the first token
    fail_every: int = 0  # every Nth generation request answers HTTP 500 (0: never)
    fail_first: int = 0  # the first N generation requests fail too
    fail_status: int = 500  # the status of a failure (429: rate limited)
    retry_after: str | None = None  # the Retry-After header of a failure
    drop_every: int = 0  # every Nth generation request loses its connection mid-stream
    drop_after_tokens: int = 2  # ...after this many tokens
    tokens_per_chunk: int = 1  # >1 bundles tokens per chunk, as speculative decoding does
    empty_every: int = 0  # every Nth chunk has empty text (vLLM: partial UTF-8 bytes)
    eos_after: int | None = None  # without ignore_eos, stop after this many tokens
    omit_usage: bool = False  # never send the final usage chunk
    omit_done: bool = False  # end the stream without "data: [DONE]"
    metrics: bool = True  # serve /metrics
    reset: bool = True  # serve POST /reset_prefix_cache
    api_key: str | None = None  # when set, generation requests need "Bearer <key>"
    kv_capacity: int = 16  # in-flight requests that fill the fake KV cache
    interleave: bool = True  # with no token delay, yield between tokens so streams interleave
    output_text: Callable[[str, int], list[str]] = default_output_text


@dataclass
class FakeServer:
    url: str
    stats: FakeStats
    knobs: Knobs


class _Counters:
    """vLLM-named Prometheus series that move with the traffic."""

    def __init__(self) -> None:
        self.preemptions = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.seen_prompts: set[str] = set()

    def render(self, in_flight: int, capacity: int) -> bytes:
        labels = f'{{engine="0",model_name="{MODEL}"}}'
        usage = min(1.0, in_flight / capacity)
        created = f"{time.time():.3f}"
        lines = [
            "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.",
            "# TYPE vllm:num_preemptions_total counter",
            f"vllm:num_preemptions_total{labels} {float(self.preemptions)}",
            f"vllm:num_preemptions_created{labels} {created}",
            "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of tokens.",
            "# TYPE vllm:prefix_cache_queries_total counter",
            f"vllm:prefix_cache_queries_total{labels} {float(self.prefix_queries)}",
            "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of tokens.",
            "# TYPE vllm:prefix_cache_hits_total counter",
            f"vllm:prefix_cache_hits_total{labels} {float(self.prefix_hits)}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{labels} {usage}",
            "",
        ]
        return "\n".join(lines).encode()


def _prompt_of(payload: dict[str, Any]) -> str:
    if "messages" in payload:
        return "\n".join(str(m.get("content", "")) for m in payload["messages"])
    prompt = payload.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def _dumps(obj: Any) -> bytes:
    # Compact, like vLLM's pydantic model_dump_json.
    return json.dumps(obj, separators=(",", ":")).encode()


def _response(status: int, reason: str, body: bytes, content_type: str, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _json_response(status: int, reason: str, obj: Any) -> bytes:
    return _response(status, reason, _dumps(obj), "application/json")


def _sse_chunk(obj: Any) -> bytes:
    # One SSE event per HTTP chunk, as uvicorn sends vLLM's stream.
    data = b"data: " + (obj if isinstance(obj, bytes) else _dumps(obj)) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class _App:
    def __init__(self, knobs: Knobs, stats: FakeStats) -> None:
        self.knobs = knobs
        self.stats = stats
        self.counters = _Counters()
        self.writers: set[asyncio.StreamWriter] = set()

    def close_connections(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                keep = await self.dispatch(method, target.split("?", 1)[0], headers, body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def dispatch(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        k = self.knobs
        if path in ("/v1/completions", "/v1/chat/completions") and method == "POST":
            return await self.generate(path, headers, body, writer)
        self.stats.control_paths.append(path)
        if path == "/v1/models" and method == "GET":
            self.stats.models_calls += 1
            data = {"object": "list", "data": [{"id": MODEL, "object": "model", "root": MODEL}]}
            writer.write(_json_response(200, "OK", data))
        elif path == "/metrics" and method == "GET" and k.metrics:
            self.stats.metrics_calls += 1
            text = self.counters.render(self.stats.in_flight, k.kv_capacity)
            writer.write(_response(200, "OK", text, "text/plain; version=0.0.4"))
        elif path == "/reset_prefix_cache" and k.reset:
            if method != "POST":
                writer.write(_json_response(405, "Method Not Allowed", {"detail": "POST"}))
            else:
                self.stats.reset_calls += 1
                self.counters.seen_prompts.clear()
                writer.write(_response(200, "OK", b"", "text/plain"))
        elif path == "/version" and method == "GET":
            writer.write(_json_response(200, "OK", {"version": VERSION}))
        elif path == "/health" and method == "GET":
            writer.write(_response(200, "OK", b"", "text/plain"))
        else:
            writer.write(_json_response(404, "Not Found", {"detail": "Not Found"}))
        await writer.drain()
        return True

    async def generate(
        self, path: str, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        k, s = self.knobs, self.stats
        s.requests += 1
        nth = s.requests
        s.arrivals.append(time.perf_counter())
        s.paths.append(path)
        auth = headers.get("authorization")
        s.auth_headers.append(auth)
        payload = json.loads(body)
        s.payloads.append(payload)

        if k.api_key is not None and auth != f"Bearer {k.api_key}":
            err = {"error": {"message": "invalid api key", "type": "Unauthorized", "code": 401}}
            writer.write(_json_response(401, "Unauthorized", err))
            await writer.drain()
            return True
        if (k.fail_every and nth % k.fail_every == 0) or nth <= k.fail_first:
            s.failed += 1
            reason = HTTPStatus(k.fail_status).phrase
            err = {"error": {"message": "fake failure", "type": reason, "code": k.fail_status}}
            extra = f"retry-after: {k.retry_after}\r\n" if k.retry_after else ""
            writer.write(_response(k.fail_status, reason, _dumps(err), "application/json", extra))
            await writer.drain()
            return True

        chat = path.endswith("/chat/completions")
        prompt = _prompt_of(payload)
        prompt_tokens = max(1, len(prompt.split()))
        c = self.counters
        c.prefix_queries += prompt_tokens
        if prompt in c.seen_prompts:
            c.prefix_hits += prompt_tokens
        c.seen_prompts.add(prompt)

        max_tokens = int(payload.get("max_tokens") or payload.get("max_completion_tokens") or 16)
        n_tokens = max_tokens
        if k.eos_after is not None and not payload.get("ignore_eos", False):
            n_tokens = min(n_tokens, k.eos_after)
        texts = k.output_text(prompt, n_tokens)
        drop = bool(k.drop_every) and nth % k.drop_every == 0

        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        if s.in_flight > k.kv_capacity:
            c.preemptions += 1
        try:
            return await self._stream(writer, payload, chat, texts, prompt_tokens, drop)
        finally:
            s.in_flight -= 1

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        payload: dict[str, Any],
        chat: bool,
        texts: list[str],
        prompt_tokens: int,
        drop: bool,
    ) -> bool:
        k = self.knobs
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self.stats.requests}"
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        n = len(texts)
        # Group the token texts into chunks (one per decode step).
        step = max(1, k.tokens_per_chunk)
        pieces = ["".join(texts[i : i + step]) for i in range(0, n, step)]
        if k.empty_every:
            pieces = ["" if (i + 1) % k.empty_every == 0 else p for i, p in enumerate(pieces)]

        if not payload.get("stream"):
            if k.ttft_delay_s:
                await asyncio.sleep(k.ttft_delay_s)
            text = "".join(pieces)
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n}
            usage["total_tokens"] = prompt_tokens + n
            full = {"id": rid, "object": obj.replace(".chunk", ""), "created": created}
            full.update({"model": MODEL, "choices": [choice], "usage": usage})
            writer.write(_json_response(200, "OK", full))
            await writer.drain()
            return True

        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        if k.ttft_delay_s:
            await writer.drain()
            await asyncio.sleep(k.ttft_delay_s)
        prefix = {"id": rid, "object": obj, "created": created, "model": MODEL}
        if chat:
            # vLLM opens a chat stream with a role-only chunk when the first token is ready.
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            first.update({"logprobs": None, "finish_reason": None})
            writer.write(_sse_chunk({**prefix, "choices": [first]}))
        for i, piece in enumerate(pieces):
            if drop and i * step >= k.drop_after_tokens:
                self.stats.dropped += 1
                await writer.drain()
                writer.transport.abort()
                return False
            if i and k.token_delay_s:
                await writer.drain()
                await asyncio.sleep(k.token_delay_s)
            elif i and k.interleave:
                await asyncio.sleep(0)
            finish = "length" if i == len(pieces) - 1 else None
            if chat:
                choice = {"index": 0, "delta": {"content": piece}, "logprobs": None}
                choice["finish_reason"] = finish
            else:
                choice = {"index": 0, "text": piece, "logprobs": None}
                choice.update({"finish_reason": finish, "stop_reason": None})
            writer.write(_sse_chunk({**prefix, "choices": [choice]}))
        opts = payload.get("stream_options") or {}
        if opts.get("include_usage") and not k.omit_usage:
            usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + n}
            usage["completion_tokens"] = n
            writer.write(_sse_chunk({**prefix, "choices": [], "usage": usage}))
        if not k.omit_done:
            writer.write(_sse_chunk(b"[DONE]"))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


async def serve(
    knobs: Knobs, stats: FakeStats, port: int = 0, host: str = "127.0.0.1"
) -> tuple[asyncio.Server, _App]:
    app = _App(knobs, stats)
    return await asyncio.start_server(app.handle, host, port, backlog=1024), app


@contextlib.contextmanager
def running_fake_server(**knobs: Any) -> Iterator[FakeServer]:
    """Run the fake on a background thread on a free 127.0.0.1 port for the ``with`` body."""
    k = Knobs(**knobs)
    stats = FakeStats()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            box["server"], box["app"] = loop.run_until_complete(serve(k, stats))
        except BaseException as exc:  # surfaced to the caller below
            box["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
    thread.start()
    started.wait(10)
    if "error" in box:
        raise box["error"]
    server: asyncio.Server = box["server"]
    app: _App = box["app"]
    port = server.sockets[0].getsockname()[1]
    try:
        yield FakeServer(url=f"http://127.0.0.1:{port}", stats=stats, knobs=k)
    finally:

        async def shutdown() -> None:
            server.close()
            # Keep-alive connections would otherwise outlive the server (and its loop).
            app.close_connections()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-delay-s", type=float, default=0.0)
    parser.add_argument("--ttft-delay-s", type=float, default=0.0)
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--drop-every", type=int, default=0)
    parser.add_argument("--no-interleave", action="store_true")
    args = parser.parse_args(argv)
    knobs = Knobs(
        token_delay_s=args.token_delay_s,
        ttft_delay_s=args.ttft_delay_s,
        fail_every=args.fail_every,
        drop_every=args.drop_every,
        interleave=not args.no_interleave,
    )

    async def run() -> None:
        server, _ = await serve(knobs, FakeStats(), args.port)
        port = server.sockets[0].getsockname()[1]
        # The first line tells a parent process which port was picked.
        print(f"listening http://127.0.0.1:{port}", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
