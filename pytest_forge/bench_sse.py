"""The incremental parser of one streamed completion's server-sent events, built for CPU.

vLLM streams ``data: {json}`` lines (``/v1/completions`` or ``/v1/chat/completions``), a
usage chunk when asked (``stream_options.include_usage``) and ``data: [DONE]``. The parser
is fed whole network reads and stamps every token chunk in a read with that read's time.
"""

from __future__ import annotations

import json
from typing import Any

_raw_decode = json.JSONDecoder().raw_decode  # skips json.loads' wrappers on the hot path


class SSEParser:
    """Incremental parser of one completions / chat SSE stream, fed whole network reads.

    Runs once per streamed chunk, so it is written for CPU: one decode and split per read,
    and JSON decoded in place from the ``data: `` line without copying it.
    """

    __slots__ = ("chat", "chunk_times", "done", "error", "tail", "texts", "usage")

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.tail = b""
        self.chunk_times: list[float] = []
        self.texts: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.error: str | None = None

    def feed(self, data: bytes, now: float) -> None:
        """Parse one network read, received at ``now`` (perf_counter seconds)."""
        if self.tail:
            data = self.tail + data
        cut = data.rfind(b"\n") + 1
        self.tail = data[cut:]
        if not cut:
            return
        chat = self.chat
        times = self.chunk_times
        texts = self.texts
        # Only whole lines are decoded, so a UTF-8 sequence is never split.
        for line in data[:cut].decode().split("\n"):
            if line[:7] == "data: {":
                obj = _raw_decode(line, 6)[0]
            elif line.startswith("data:"):
                payload = line[5:].strip()
                if payload == "[DONE]":
                    self.done = True
                    continue
                obj = _raw_decode(payload)[0]
            else:
                continue  # blank separators, ": ping" comments, event: lines
            choices = obj.get("choices")
            if choices:
                # A token chunk even when its text is empty (partial UTF-8), as vLLM counts.
                times.append(now)
                c = choices[0]
                text = (c.get("delta") or {}).get("content") if chat else c.get("text")
                if text:
                    texts.append(text)
            usage = obj.get("usage")
            if usage:
                self.usage = usage
            elif not choices and (obj.get("error") or obj.get("object") == "error"):
                err = obj.get("error")
                msg = err.get("message") if isinstance(err, dict) else err
                self.error = f"server error in stream: {msg or obj.get('message')}"

    def problem(self) -> str | None:
        """Why the stream, now ended, is no complete answer; None when it is one."""
        if self.error is not None:
            return self.error
        if not self.chunk_times:
            return "stream ended without any token chunk"
        if self.usage is None:
            return "stream ended without a usage chunk (stream_options.include_usage)"
        if not self.done:
            return "stream ended without data: [DONE]"
        return None
