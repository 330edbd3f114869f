"""`kubectl aegis completion bash|zsh` (generated from the verbs' parsers) and `-o json|yaml`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from aegis import kubectl, kubectl_completion


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "aegis.bash"
    path.write_text(kubectl_completion.bash_script())
    return path


def complete(script: Path, *words: str) -> list[str]:
    """Run the completion function as bash would for `words` (the last is being typed)."""
    array = " ".join(f"'{w}'" for w in words)
    done = subprocess.run(
        [
            "bash",
            "-c",
            f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; "
            '_kubectl_aegis; printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if line]


def test_the_bash_script_is_valid_and_lists_every_verb(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert set(complete(script, "kubectl-aegis", "")) == set(kubectl.VERBS)
    assert complete(script, "kubectl-aegis", "fail") == ["failover"]


def test_sub_verbs_flags_and_choices_complete(script: Path) -> None:
    assert set(complete(script, "kubectl", "aegis", "failover", "")) >= {
        "status", "approve", "trigger", "failback",
    }
    assert complete(script, "aegis", "status", "-o", "") == ["json", "yaml"]
    assert complete(script, "kubectl-aegis", "drill", "status", "hourly", "--o") == ["--output"]
    assert complete(script, "kubectl-aegis", "report", "--format", "h") == ["html"]
    assert complete(script, "kubectl-aegis", "completion", "") == ["bash", "zsh", "-h", "--help"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_the_zsh_script_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "aegis.zsh"
    path.write_text(kubectl_completion.zsh_script())
    subprocess.run(["zsh", "-n", str(path)], check=True)


def test_the_zsh_script_wraps_the_bash_one() -> None:
    text = kubectl_completion.zsh_script()
    assert "bashcompinit" in text and kubectl_completion.bash_script() in text


def test_object_printing_verbs_take_an_output_format() -> None:
    assert kubectl.status_parser().parse_args(["-o", "yaml"]).output == "yaml"
    assert kubectl.backup_parser().parse_args(["orders", "-o", "json"]).output == "json"
    with pytest.raises(SystemExit):
        kubectl.status_parser().parse_args(["-o", "wide"])


def test_objects_print_as_one_object_or_a_list(capsys: pytest.CaptureFixture[str]) -> None:
    obj = {"kind": "RecoveryPoint", "metadata": {"name": "p1"}}
    kubectl.print_objects([obj], "json")
    assert json.loads(capsys.readouterr().out) == obj
    kubectl.print_objects([obj, obj], "yaml", single=False)
    listed = yaml.safe_load(capsys.readouterr().out)
    assert listed["kind"] == "List" and listed["items"] == [obj, obj]
