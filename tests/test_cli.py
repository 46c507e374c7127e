"""The command line as a newcomer meets it: `--help` loads no torch, every command starts with only
the core dependencies installed (or says in one line which extra it needs), and `speechllm chat`
runs with only the `[data]` extra. Missing packages are simulated in a subprocess by putting
`None` in `sys.modules`, which Python treats as not installed."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from speechllm.cli import COMMANDS
from speechllm.cli.extras import DISTRIBUTION_OF, extra_for, optional_dependencies
from speechllm.inference.generation import GenerationConfig, generate

# Runs speechllm.cli.main(argv) with the modules named in BLOCKED refused, as if not installed.
RUNNER = textwrap.dedent(
    """
    import json, os, sys

    # None in sys.modules: `import x` raises ModuleNotFoundError and importlib.util.find_spec("x")
    # answers None, exactly as for a package that is not installed.
    for name in json.loads(os.environ["BLOCKED"]):
        sys.modules[name] = None
    from speechllm.cli import main

    try:
        code = main(json.loads(os.environ["ARGV"]))
    except SystemExit as e:  # argparse: --help and usage errors
        code = e.code
    loaded = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    print("LOADED " + json.dumps(loaded), file=sys.stderr)
    sys.exit(code)
    """
)


def import_names(extras: list[str]) -> set[str]:
    """The import names of every distribution the given extras install."""
    by_distribution = {dist: module for module, dist in DISTRIBUTION_OF.items()}
    table = optional_dependencies()
    return {by_distribution.get(d, d.replace("-", "_")) for extra in extras for d in table[extra]}


RUNTIME_EXTRAS = [e for e in optional_dependencies() if e != "dev"]
OPTIONAL = import_names(RUNTIME_EXTRAS)


def run_cli(argv: list[str], blocked: set[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    import json
    import os

    env = {**os.environ, "BLOCKED": json.dumps(sorted(blocked)), "ARGV": json.dumps(argv)}
    return subprocess.run(
        [sys.executable, "-c", RUNNER], env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def loaded_modules(done: subprocess.CompletedProcess[str]) -> list[str]:
    import json

    line = next(x for x in done.stderr.splitlines() if x.startswith("LOADED "))
    return json.loads(line[len("LOADED ") :])


def messages(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [x for x in done.stderr.splitlines() if not x.startswith("LOADED ")]


def test_extras_are_read_from_the_package_metadata():
    assert extra_for("jiwer", "eval") == "eval"
    assert extra_for("jiwer", "speech") == "speech"
    assert extra_for("jiwer") == "eval"  # the smallest extra that has it
    assert extra_for("sklearn") == "speech"
    assert extra_for("fastapi", None) == "serve"
    assert extra_for("espeakng_loader", "data") == "data"
    assert extra_for("numpy") is None  # a core dependency, in no extra


def test_help_lists_every_command_and_loads_no_torch():
    done = run_cli(["--help"], blocked=set())
    assert done.returncode == 0, done.stderr
    assert loaded_modules(done) == []
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s", done.stdout, re.M), f"{name} missing from --help"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_starts_with_only_core_dependencies(command):
    """`speechllm COMMAND --help` with no extra installed: the help, or one line naming the extra."""
    done = run_cli([command, "--help"], blocked=OPTIONAL)
    if done.returncode == 0:
        assert done.stdout.startswith(f"usage: speechllm {command}"), done.stdout
        return
    expected = COMMANDS[command].extra
    assert done.returncode == 2, done.stderr
    assert messages(done) == [m for m in messages(done) if m.startswith(f"speechllm {command}: needs the ")]
    assert len(messages(done)) == 1, done.stderr
    assert f"pip install 'speechllm[{expected}]'" in messages(done)[0], done.stderr


def test_commands_that_need_no_extra_build_their_parser_without_torch():
    for command in ("chat", "transcribe", "serve", "info", "train", "data", "eval", "bench"):
        done = run_cli([command, "--help"], blocked=OPTIONAL)
        assert done.returncode == 0, done.stderr
        assert loaded_modules(done) == [], command


def test_a_missing_extra_at_run_time_is_one_line_and_exit_2():
    done = run_cli(["serve", "--port", "0"], blocked=import_names(["serve"]))
    assert done.returncode == 2
    assert messages(done) == [
        "speechllm serve: needs the 'serve' extra: pip install 'speechllm[serve]' (missing module 'uvicorn')"
    ]


def test_a_missing_module_of_speechllm_itself_is_a_traceback():
    """A broken install of our own code is a bug to show whole, not an extra to install."""
    code = "from speechllm.cli.extras import missing_dependency_message as m; "
    code += "print(m(ModuleNotFoundError('x', name='speechllm.nope')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None"


@pytest.mark.slow
def test_chat_runs_with_only_the_data_extra(tiny_model, tmp_path):
    """The README's first command: `speechllm chat` (which speaks its sample question with eSpeak)
    needs nothing beyond core + [data]: no jiwer, scikit-learn, faster-whisper or FastAPI."""
    from speechllm.cli.run import SAMPLE_QUESTION
    from speechllm.data.tts import EspeakEngine
    from speechllm.model import save_pretrained

    checkpoint = save_pretrained(tiny_model, tmp_path / "ckpt")
    blocked = OPTIONAL - import_names(["data"])
    assert {"jiwer", "sklearn", "faster_whisper", "fastapi"} <= blocked
    done = run_cli(["chat", "--model", str(checkpoint), "--max-new-tokens", "4"], blocked=blocked)
    assert done.returncode == 0, done.stderr
    question = EspeakEngine().synthesize(SAMPLE_QUESTION, voice="en-us", rate=1.0)
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": question}]}]
    expected = generate(tiny_model, [conversation], GenerationConfig(max_new_tokens=4))[0]
    assert done.stdout == expected + "\n"  # only the answer goes to stdout
