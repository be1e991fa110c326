"""toolguard quickstart: a LangChain agent processes job 42 with guarded key-value tools.

Offline and repeatable: the chat model is scripted (no network, no API key), and the key-value
service is a real HTTP server on loopback (``kv_service.py``) that verifies every call's
credential.

Its files live in one folder, ``.toolguard/demo`` in the checkout unless ``--workdir`` (or
``make demo WORKDIR=...``) says otherwise: the config it ran with (``toolguard.yaml``, a copy
of ``quickstart.yaml``), the signing key (created once, kept) and the audit trail (a fresh one
each run). The ``toolguard`` command finds ``./toolguard.yaml``, so after ``cd`` into that
folder every command of the README's tour works on the demo's trail.

What it shows, in order:

1. allowed reads and writes inside the task's declared namespace, each call with its own
   just-in-time credential that the service checks;
2. a write outside ``agents:jobs:42:*`` denied, with the reason the model received (and quotes);
3. the task ending and its credentials revoked;
4. a credential captured during the task (by this example only) replayed after it: the service
   answers 401, revoked;
5. the task's audit timeline, printed by toolguard's viewer, and the commands to see it again.

Run it with ``make demo`` or ``python examples/quickstart.py [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolCall, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import BaseTool, tool

import toolguard as tg
from toolguard.viewer import Viewer

HERE = Path(__file__).resolve().parent
DEFAULT_WORKDIR = HERE.parent / ".toolguard" / "demo"  # in the checkout; git ignores .toolguard/
CONFIG_NAME = "toolguard.yaml"  # the name the toolguard command looks for in the current folder
CONFIG_HEADER = "# Written by examples/quickstart.py (make demo) from examples/quickstart.yaml.\n"
sys.path.insert(0, str(HERE))  # kv_service.py sits next to this file

from kv_service import serve  # noqa: E402

JOB_ID = "42"
STYLE_KEY = "agents:context:style"
INPUT_KEY = f"agents:jobs:{JOB_ID}:input"
RESULT_KEY = f"agents:jobs:{JOB_ID}:result"
OTHER_KEY = "agents:jobs:43:result"  # another job's namespace: outside this task
DENIED_PREFIX = "Denied by toolguard: "


# -- the model: scripted, but it reads what the tools answered ----------------------------------


class QuickstartModel(BaseChatModel):
    """A scripted chat model. Its next turn depends only on the tool results so far:

    read the house style, read the job's input, write the job's result, try to write another
    job's result, then answer, quoting the denial it received.
    """

    @property
    def _llm_type(self) -> str:
        return "quickstart-scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> QuickstartModel:
        """The script already knows which tools it calls."""
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=next_turn(messages))])


def next_turn(messages: Sequence[BaseMessage]) -> AIMessage:
    """The model's next message, given the conversation so far."""
    results = [m for m in messages if isinstance(m, ToolMessage)]
    step = len(results)
    if step == 0:
        return _calls("kv_get", key=STYLE_KEY)
    if step == 1:
        return _calls("kv_get", key=INPUT_KEY)
    if step == 2:
        style, job_input = str(results[0].content), str(results[1].content)
        return _calls("kv_set", key=RESULT_KEY, value=f"{job_input.upper()} [{style}]")
    if step == 3:
        return _calls("kv_set", key=OTHER_KEY, value="job 42 was here")
    denial = str(results[-1].content)
    return AIMessage(
        content=f"Job {JOB_ID} is processed; its result is stored under {RESULT_KEY}. "
        f'I also tried to write {OTHER_KEY}, but that was refused: "{denial}"'
    )


def _calls(name: str, **args: str) -> AIMessage:
    call_id = f"call-{name}-{args['key']}"
    return AIMessage(
        content="", tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}]
    )


# -- the tools: plain LangChain tools that call the key-value service ---------------------------


def make_tools(client: httpx.Client, captured: list[str]) -> list[BaseTool]:
    """``kv_get`` and ``kv_set``. ``client`` sends each call's credential (``CredentialAuth``)."""

    @tool
    def kv_get(key: str) -> str:
        """Read the value stored under a key in the key-value service."""
        response = client.get(f"/kv/{quote(key, safe=':')}")
        if response.status_code == 404:
            return "(no value)"
        response.raise_for_status()
        return str(response.json()["value"])

    @tool
    def kv_set(key: str, value: str) -> str:
        """Store a value under a key in the key-value service."""
        response = client.put(f"/kv/{quote(key, safe=':')}", json={"value": value})
        response.raise_for_status()
        # For this demo only: keep a copy of the call's token to replay it after the task.
        # Real tools never keep credentials; every call gets a fresh one.
        captured.append(tg.current_credential().token)
        return "stored"

    return [kv_get, kv_set]


# -- the run ------------------------------------------------------------------------------------


def prepare(workdir: Path) -> Path:
    """Make ``workdir`` the demo's folder: its config, its key (kept) and a fresh trail.

    Returns the config's path. Refuses a folder with files the demo did not write.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / CONFIG_NAME
    ours = config_path.is_file() and config_path.read_text(encoding="utf-8").startswith(
        CONFIG_HEADER
    )
    if not ours and any(workdir.iterdir()):
        raise SystemExit(
            f"{workdir} is not empty and is not a folder of this demo; pick a new or empty "
            "folder with --workdir (make demo WORKDIR=...)"
        )
    config_path.write_text(
        CONFIG_HEADER + (HERE / "quickstart.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    config = tg.load_config(config_path)
    store = config.store_path
    for path in (store, *(Path(f"{store}{s}") for s in ("-wal", "-shm", "-journal"))):
        path.unlink(missing_ok=True)  # each run starts from a fresh trail; the key is kept
    config.checkpoints_path.unlink(missing_ok=True)
    return config_path


def see_again(workdir: Path, task_id: str) -> list[str]:
    """Shell lines that show the run again, as printed: get ``toolguard``, go to the folder."""
    lines: list[str] = []
    bin_dir = Path(sys.executable).parent
    installed = bin_dir / "toolguard"
    on_path = shutil.which("toolguard")
    if installed.exists() and (on_path is None or Path(on_path).parent != bin_dir):
        activate = bin_dir / "activate"
        if activate.exists():
            lines.append(f". {_shown(activate)}    # puts the toolguard command on your PATH")
        else:
            lines.append(f'export PATH="{bin_dir}:$PATH"    # the toolguard command')
    elif on_path is None:
        lines.append("pip install ./ ./packages/agent-toolguard    # the toolguard command")
    lines += [
        f"cd {_shown(workdir)}    # toolguard finds ./{CONFIG_NAME}, this run's config",
        f"toolguard audit show {task_id}",
        "toolguard audit tasks",
        "toolguard audit export --format html -o report.html",
    ]
    return lines


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it, quoted for a shell."""
    try:
        text = os.path.relpath(path.resolve())
    except ValueError:  # pragma: no cover - another drive on Windows
        text = str(path.resolve())
    if text.startswith(".."):
        text = str(path.resolve())
    return shlex.quote(text)


def run(workdir: Path, out: Any = None) -> int:
    """Run the whole quickstart with its files in ``workdir``; returns an exit code."""
    out = out or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    config_path = prepare(workdir)
    with tg.Guard.from_config(config_path) as guard:
        operations = {name: rule.operation for name, rule in guard.config.tools.items()}
        with serve(
            jwks=guard.keys.jwks(),  # the service gets public keys only
            store_path=str(guard.config.store_path),  # and reads revocations from the trail
            issuer=guard.config.issuer.name,
            audience="kv-service",
        ) as base_url:
            say(f"toolguard quickstart: scripted model, key-value service at {base_url}")
            captured: list[str] = []
            client = httpx.Client(
                base_url=base_url, auth=tg.CredentialAuth(), trust_env=False, timeout=10.0
            )
            with client:
                tools = tg.guard(make_tools(client, captured), guard)
                _seed(guard, tools, say)
                captured.clear()

                agent = create_agent(QuickstartModel(), tools=tools)
                with guard.task("process-job", job_id=JOB_ID) as task:
                    say(
                        f"\nTask {task.task_id} started: intent {task.intent}, identity "
                        f"{task.identity}, job_id={JOB_ID}"
                    )
                    answer = _run_agent(agent, operations, say)

            issued = len(guard.audit.events(task_id=task.task_id, kind="request"))
            say(f"\nTask ended ({task.status}): {issued} credentials revoked")
            say(f'Model\'s final answer: "{answer}"')

            replay = httpx.put(
                f"{base_url}/kv/{RESULT_KEY}",
                json={"value": "overwritten by a replayed credential"},
                headers={"Authorization": f"Bearer {captured[-1]}"},
                trust_env=False,
            )
            why = replay.json().get("error_description", "")
            say(f"Replay after the task: service answered {replay.status_code} ({why})")

        say("\nAudit timeline of the task:")
        Viewer(file=out).timeline(
            guard.audit.task(task.task_id) or {}, guard.audit.timeline(task.task_id)
        )
        say(f"\nFiles of this run (config, signing key, audit trail): {_shown(workdir)}")
        say("See it again:")
        for line in see_again(workdir, task.task_id):
            say(f"  {line}")
    ok = replay.status_code == 401 and task.status == "ok"
    return 0 if ok else 1


def _seed(guard: tg.Guard, tools: Sequence[BaseTool], say: Any) -> None:
    """Put the job's input into the service, under its own small task."""
    kv_set = next(t for t in tools if t.name == "kv_set")
    with guard.task("seed-demo"):
        kv_set.invoke({"key": STYLE_KEY, "value": "one line, plain words"})
        kv_set.invoke({"key": INPUT_KEY, "value": "count the words in report.txt"})
    say(f"Seeded {STYLE_KEY} and {INPUT_KEY} (task seed-demo, its own credentials)")


def _run_agent(agent: Any, operations: dict[str, str], say: Any) -> str:
    """Stream the agent's steps and describe each in plain words; returns its final answer."""
    pending: dict[str, ToolCall] = {}
    answer = ""
    request = {"messages": [("user", f"Process job {JOB_ID}.")]}
    for update in agent.stream(request, stream_mode="updates"):
        for node in update.values():
            for message in (node or {}).get("messages", []):
                if isinstance(message, AIMessage) and message.tool_calls:
                    for call in message.tool_calls:
                        pending[str(call["id"])] = call
                        args = ", ".join(f"{k}={v!r}" for k, v in call["args"].items())
                        say(f"  model calls {call['name']}({args})")
                elif isinstance(message, ToolMessage):
                    call = pending.pop(str(message.tool_call_id))
                    op, key = operations[call["name"]], call["args"]["key"]
                    content = str(message.content)
                    if message.status == "error":
                        reason = content.removeprefix(DENIED_PREFIX)
                        say(f"  DENIED  {op} {key} — {reason}")
                    else:
                        say(f"  ALLOWED {op} {key} -> {content!r}")
                elif isinstance(message, AIMessage):
                    answer = str(message.content)
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the toolguard quickstart (offline).")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="the folder of the demo's config, signing key and audit trail (default: "
        ".toolguard/demo in the checkout); the trail is fresh each run, the key is kept",
    )
    args = parser.parse_args(argv)
    return run(args.workdir)


if __name__ == "__main__":
    sys.exit(main())
