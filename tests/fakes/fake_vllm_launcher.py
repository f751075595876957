"""A stand-in for ``vllm serve``: takes vLLM's serving args, misbehaves on request.

Run as ``python fake_vllm_launcher.py --mode MODE [fake options] --model M --host H
--port P --served-model-name N [recipe args...]``; unknown args are ignored like the
recipe's vLLM args. Modes:

- ok: serves /v1/models and /v1/completions at once
- exit: prints an error line and exits 1 (a vLLM that rejects its arguments)
- hang: never listens (a vLLM stuck loading)
- no-completions: /v1/models works, /v1/completions answers 500 (engine not ready)
- grandchild: spawns a long-sleeping grandchild (pid written to --pid-file), then ok
- die-after: ok, then exits with code 3 after --die-after seconds
- busy-once: the first run (no --marker file yet) fails like a taken port, later runs ok
- ignore-term: ok, but ignores SIGTERM (only SIGKILL stops it)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ERROR_LINE = "ValueError: fake-vllm: max_num_seqs must be positive, got -5"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--served-model-name", default="fake-model")
    parser.add_argument("--pid-file")
    parser.add_argument("--env-file")
    parser.add_argument("--marker")
    parser.add_argument("--die-after", type=float, default=1.0)
    args, _unknown = parser.parse_known_args(argv)
    return args


def _handler(model: str, completions_ok: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            print(f"fake-vllm: {format % args}", flush=True)

        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model, "object": "model"}]})
            elif self.path == "/health":
                self._send(200, {})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if self.path != "/v1/completions":
                self._send(404, {"error": "not found"})
            elif not completions_ok:
                self._send(500, {"error": "engine not ready"})
            else:
                self._send(
                    200,
                    {
                        "object": "text_completion",
                        "model": model,
                        "choices": [{"index": 0, "text": " world", "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                )

    return Handler


def main(argv: list[str]) -> int:
    args = _parse(argv)
    print(f"fake-vllm: mode={args.mode} pid={os.getpid()} port={args.port}", flush=True)
    if args.env_file:
        Path(args.env_file).write_text(json.dumps(dict(os.environ)))
    if args.mode == "exit":
        print(ERROR_LINE, flush=True)
        return 1
    if args.mode == "hang":
        while True:
            time.sleep(1)
    if args.mode == "busy-once" and args.marker and not Path(args.marker).exists():
        Path(args.marker).write_text("1")
        print("OSError: [Errno 98] Address already in use", flush=True)
        return 1
    if args.mode == "grandchild":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path(args.pid_file).write_text(str(child.pid))
    if args.mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.mode == "die-after":
        threading.Timer(args.die_after, lambda: os._exit(3)).start()

    server = ThreadingHTTPServer(
        (args.host, args.port), _handler(args.served_model_name, args.mode != "no-completions")
    )
    print("fake-vllm: Application startup complete.", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
