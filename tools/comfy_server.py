"""A real ComfyUI server in a subprocess, with this pack installed, for headless end-to-end runs.

Importing comfy in-process tests the nodes, but not what users run: main.py discovering the pack
in custom_nodes/, /object_info describing it to the frontend, /prompt validating a workflow and
the executor running it. This starts exactly that, in a throwaway base directory, and talks to
it over its HTTP API with the standard library only (so it works from any interpreter).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tools.comfy_host import REPO, comfyui_path

log = logging.getLogger(__name__)

PACK_FOLDER = "comfyui-ipadapter"  # the folder name ComfyUI Manager clones the repository into
INSTALL_MODES = ("symlink", "copy")


class ServerError(RuntimeError):
    """The server died, did not start, or did not answer as expected."""


class PromptRejected(ServerError):
    """POST /prompt answered 400: the prompt failed validation; node_errors says where."""

    def __init__(self, error: dict, node_errors: dict):
        super().__init__(f"Prompt rejected: {error.get('message', error)}; node errors: {json.dumps(node_errors)}")
        self.error = error
        self.node_errors = node_errors


class PromptFailed(ServerError):
    """The prompt was accepted but a node raised while executing it."""

    def __init__(self, message: str, details: dict):
        super().__init__(message)
        self.details = details


class ComfyServer:
    """`with ComfyServer(base_dir, models_dir) as server:` - a started server, stopped on exit.

    base_dir becomes ComfyUI's --base-directory (custom_nodes/, models/, input/, output/, user/,
    server.log). Every file under models_dir/<folder>/ is linked to the same place under base_dir/models/.
    install: "symlink" links the repository into custom_nodes/ (edits show up on restart);
    "copy" copies the files git tracks or would track (not .venv, .cache or anything ignored), as
    a clone by ComfyUI Manager holds them, which catches a pack that needs an ignored file.
    """

    def __init__(self, base_dir: Path, models_dir: Path | None = None, install: str = "symlink", startup_timeout: float = 120.0):
        if install not in INSTALL_MODES:
            raise ValueError(f"install must be one of {INSTALL_MODES}, not {install!r}")
        self.base_dir = Path(base_dir).resolve()
        self.models_dir = Path(models_dir).resolve() if models_dir is not None else None
        self.install = install
        self.startup_timeout = startup_timeout
        self.log_path = self.base_dir / "server.log"
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ComfyServer":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        self.prepare_base_dir()
        if (comfyui_path() / "extra_model_paths.yaml").is_file():
            log.warning("%s has an extra_model_paths.yaml: the server also sees the model folders it lists", comfyui_path())
        self.port = free_port()
        command = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            "--disable-auto-launch",
            # Offline: no API nodes calling out, and a frontend that does not try to either.
            "--disable-api-nodes",
            # The default database lives inside the ComfyUI folder, shared by every server started from it.
            "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
        ]
        log.info("Starting ComfyUI on port %d (log: %s)", self.port, self.log_path)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command, cwd=comfyui_path(), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            self.wait_until_ready()
        except BaseException:  # a failed start or Ctrl-C must not leave a server behind
            self.stop()
            raise

    def wait_until_ready(self) -> None:
        started = time.monotonic()
        while time.monotonic() - started < self.startup_timeout:
            self.check_alive()
            try:
                self.request("/object_info", timeout=30)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
                continue
            log.info("ComfyUI answered after %.1f s", time.monotonic() - started)
            return
        raise ServerError(f"ComfyUI did not answer within {self.startup_timeout:.0f} s.\n{self.log_tail()}")

    def prepare_base_dir(self) -> None:
        """custom_nodes/<pack>, models/<folder>/<file> links, and the folders ComfyUI writes to."""
        for folder in ("custom_nodes", "models", "input", "output", "user"):
            (self.base_dir / folder).mkdir(parents=True, exist_ok=True)
        pack = self.base_dir / "custom_nodes" / PACK_FOLDER
        if pack.is_symlink() or pack.is_file():
            pack.unlink()
        elif pack.exists():
            shutil.rmtree(pack)
        if self.install == "symlink":
            pack.symlink_to(REPO, target_is_directory=True)
        else:
            copy_tracked_files(REPO, pack)
        if self.models_dir is not None:  # nested too: InsightFace packs live in insightface/models/<pack>/
            for source in sorted(self.models_dir.rglob("*")):
                relative = source.relative_to(self.models_dir)
                if source.is_file() and len(relative.parts) > 1 and not any(part.startswith(".") for part in relative.parts):
                    link = self.base_dir / "models" / relative
                    link.parent.mkdir(parents=True, exist_ok=True)
                    if link.is_symlink():
                        link.unlink()
                    if not link.exists():  # a real file a user put there wins
                        link.symlink_to(source)

    def stop(self) -> None:
        """Terminate (SIGTERM), then kill if it has not exited after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
        log.info("ComfyUI stopped (exit code %s)", self.process.returncode)

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise ServerError(f"ComfyUI is not running (exit code {code}).\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.is_file():
            return "(no server log)"
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last {len(text)} lines of {self.log_path} ---\n" + "\n".join(text)

    def request(self, path: str, payload: dict | None = None, timeout: float = 60) -> bytes:
        data = None if payload is None else json.dumps(payload).encode()
        headers = {} if payload is None else {"Content-Type": "application/json"}
        with urllib.request.urlopen(urllib.request.Request(self.url + path, data=data, headers=headers), timeout=timeout) as response:
            return response.read()

    def object_info(self) -> dict[str, Any]:
        return json.loads(self.request("/object_info"))

    def queue(self, api_prompt: dict, client_id: str | None = None) -> str:
        """POST /prompt; returns the prompt id, or raises PromptRejected with the server's node_errors.

        client_id: the websocket client that gets the prompt's progress messages (as the frontend's).
        """
        try:
            answer = json.loads(self.request("/prompt", {"prompt": api_prompt, "client_id": client_id or uuid.uuid4().hex}))
        except urllib.error.HTTPError as error:
            if error.code != 400:
                raise
            body = json.loads(error.read() or b"{}")
            raise PromptRejected(body.get("error", {}), body.get("node_errors", {})) from None
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600, poll: float = 0.5) -> dict[str, Any]:
        """Poll /history until the prompt is done; its history entry, or PromptFailed with the node's error."""
        entry = self.wait_done(prompt_id, timeout, poll)
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            raise execution_error(status)
        return entry

    def wait_done(self, prompt_id: str, timeout: float = 600, poll: float = 0.5) -> dict[str, Any]:
        """Poll /history until the prompt is done, whatever its end (success, error, interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            entry = json.loads(self.request(f"/history/{urllib.parse.quote(prompt_id)}")).get(prompt_id)
            if entry is not None:  # a prompt enters the history when it is done
                return entry
            time.sleep(poll)
        raise TimeoutError(f"Prompt {prompt_id} not done after {timeout:.0f} s.\n{self.log_tail()}")

    def interrupt(self, prompt_id: str) -> None:
        """POST /interrupt naming the running prompt, as the frontend's cancel button does."""
        self.request("/interrupt", {"prompt_id": prompt_id})

    @staticmethod
    def output_images(history_entry: dict) -> list[dict[str, str]]:
        """Every image the output nodes (SaveImage, PreviewImage...) reported, as /view references."""
        return [
            {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": image.get("type", "output")}
            for node_output in history_entry.get("outputs", {}).values()
            for image in node_output.get("images", [])
        ]

    def fetch(self, image_ref: dict[str, str]) -> bytes:
        return self.request("/view?" + urllib.parse.urlencode(image_ref))


def execution_error(status: dict) -> PromptFailed:
    """The executor's execution_error message (node, exception) from a history status."""
    for event, data in status.get("messages", []):
        if event == "execution_error":
            message = f"{data.get('node_type')} (node {data.get('node_id')}) failed: {data.get('exception_type')}: {data.get('exception_message')}"
            return PromptFailed(message, data)
    return PromptFailed(f"Prompt failed without an execution_error message: {json.dumps(status)}", status)


def copy_tracked_files(repo: Path, target: Path) -> None:
    """What a clone of the repository would contain: tracked files plus new ones not ignored."""
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=repo,
                             check=True, capture_output=True).stdout.decode()
    for relative in filter(None, listing.split("\0")):
        source = repo / relative
        if source.is_file():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / relative)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
