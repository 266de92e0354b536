"""Errors a user can cause at the command line: one line saying what to do, a traceback only with PAD_DEBUG=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pad_nerfstudio.cli_errors import DEBUG_VARIABLE, one_line, user_errors

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
ENV.pop(DEBUG_VARIABLE, None)


def run(*args: str, debug: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**ENV, DEBUG_VARIABLE: "1"} if debug else ENV
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


# ------------------------------------------------------------------------------------------- the shared piece
def test_one_line_messages():
    assert (
        one_line(FileNotFoundError(2, "No such file or directory", "data/cat")) == "data/cat: No such file or directory"
    )
    assert one_line(OSError("disk on fire")) == "disk on fire"
    assert one_line(ValueError("first line\n  second line\n")) == "first line second line"
    assert one_line(RuntimeError()) == "RuntimeError"


def test_user_errors_exit_codes(monkeypatch, capsys):
    monkeypatch.delenv(DEBUG_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as exit_info, user_errors("pad-x"):
        raise ValueError("bad --size\nuse 32 or more")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "pad-x: error: bad --size use 32 or more\n"
    with pytest.raises(SystemExit) as exit_info, user_errors("pad-x"):
        raise KeyboardInterrupt
    assert exit_info.value.code == 130 and capsys.readouterr().err == "pad-x: interrupted\n"
    with pytest.raises(SystemExit) as exit_info, user_errors("pad-x"):
        raise SystemExit(2)  # what the script decided stays
    assert exit_info.value.code == 2
    for bug in (TypeError("a bug"), KeyError("a bug"), NotImplementedError("a bug")):  # programming errors keep theirs
        with pytest.raises(type(bug)), user_errors("pad-x"):
            raise bug
    assert capsys.readouterr().err == ""
    for value, shows_traceback in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv(DEBUG_VARIABLE, value)
        with pytest.raises(ValueError if shows_traceback else SystemExit), user_errors("pad-x"):
            raise ValueError("bad input")
    monkeypatch.setenv(DEBUG_VARIABLE, "1")
    with pytest.raises(KeyboardInterrupt), user_errors("pad-x"):
        raise KeyboardInterrupt


# ------------------------------------------------------------------------------------------- the three scripts
def test_pad_synth_defect_placement_failure_is_one_line(tmp_path, monkeypatch, capsys):
    from pad_nerfstudio.synth import cli

    def cannot_place(*args, **kwargs):
        raise RuntimeError(
            "could not place a visible Burrs defect of at least 12 px on 01Gorilla in 200 attempts; "
            "the image size (32 px) is probably too small"
        )

    monkeypatch.delenv(DEBUG_VARIABLE, raising=False)
    monkeypatch.setattr(cli, "generate_dataset", cannot_place)
    monkeypatch.setattr(sys, "argv", ["pad-synth", "--out", str(tmp_path), "--size", "32"])
    with pytest.raises(SystemExit) as exit_info:
        cli.entrypoint()
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert error.startswith("pad-synth: error: could not place a visible Burrs defect") and "too small" in error
    monkeypatch.setenv(DEBUG_VARIABLE, "1")
    with pytest.raises(RuntimeError, match="could not place"):
        cli.entrypoint()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a folder nothing can be created in (/proc)")
def test_pad_synth_unwritable_out_is_one_line_and_pad_debug_shows_the_traceback():
    result = run("pad-synth", "--out", "/proc/pad-synth-test", "--classes", "1", "--size", "32")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["pad-synth: error: /proc/pad-synth-test: No such file or directory"]
    result = run("pad-synth", "--out", "/proc/pad-synth-test", "--classes", "1", "--size", "32", debug=True)
    assert result.returncode == 1 and "Traceback" in result.stderr and "FileNotFoundError" in result.stderr


def test_pad_bench_unexpected_error_is_one_line(tmp_path, monkeypatch, capsys):
    from pad_nerfstudio.bench import cli

    def unreadable(data, classes):
        raise PermissionError(13, "Permission denied", str(data / "01Gorilla" / "transforms.json"))

    monkeypatch.delenv(DEBUG_VARIABLE, raising=False)
    monkeypatch.setattr(cli, "resolve_classes", unreadable)
    monkeypatch.setattr(sys, "argv", ["pad-bench", "--data", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.entrypoint()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"pad-bench: error: {tmp_path / '01Gorilla' / 'transforms.json'}: Permission denied"
    ]
    monkeypatch.setenv(DEBUG_VARIABLE, "1")
    with pytest.raises(PermissionError):
        cli.entrypoint()


def test_pad_demo_bad_size_is_one_line_and_pad_debug_shows_the_traceback(tmp_path):
    result = run("pad-demo", "--data", str(tmp_path), "--size", "8")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["pad-demo: error: --size must be at least 32 px, got 8"]
    result = run("pad-demo", "--data", str(tmp_path), "--size", "8", debug=True)
    assert result.returncode == 1 and "Traceback" in result.stderr and "InvalidOptionError" in result.stderr


def test_help_does_not_import_torch_or_nerfstudio():
    """--help and option errors are answered before the seconds-long imports (pad-bench, pad-demo, pad-synth)."""
    code = (
        "import sys\n"
        "import pad_nerfstudio.bench.cli, pad_nerfstudio.demo, pad_nerfstudio.synth.cli\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'torch', 'nerfstudio', 'timm'}))\n"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------- ns-eval
def _run_config(load_dir: Path) -> SimpleNamespace:
    return SimpleNamespace(load_dir=load_dir, load_step=None)


def test_eval_without_checkpoint_says_which_folder_and_what_to_do(tmp_path):
    from nerfstudio.utils import eval_utils

    from pad_nerfstudio.compat import explain_missing_checkpoints

    explain_missing_checkpoints()  # eval_utils came after the plugin here (ns-eval loads them the other way round)
    explain_missing_checkpoints()  # and again: wrapped once
    assert not hasattr(eval_utils.eval_load_checkpoint.__wrapped__, "__wrapped__")
    models = tmp_path / "nerfstudio_models"
    models.mkdir()
    with pytest.raises(SystemExit, match=r"no checkpoint \(step-\*\.ckpt\) in .*nerfstudio_models: ") as exit_info:
        eval_utils.eval_load_checkpoint(_run_config(models), pipeline=None)
    message = str(exit_info.value.code)
    assert "\n" not in message and str(models) in message
    assert "Train it again, or point --load-config at the config.yml of a run that finished training" in message
    (models / ".DS_Store").write_text("")  # not a checkpoint either
    with pytest.raises(SystemExit, match="no checkpoint"):
        eval_utils.eval_load_checkpoint(_run_config(models), pipeline=None)
    with pytest.raises(SystemExit, match=r"no checkpoint folder .*missing"):
        eval_utils.eval_load_checkpoint(_run_config(tmp_path / "missing"), pipeline=None)


def test_ns_eval_imports_wrap_the_checkpoint_loader():
    """nerfstudio's scripts import eval_utils first, which loads the plugin half-way through: still wrapped. The
    external-method placeholders were built after the plugin loaded, so without stack inspection."""
    code = (
        "import nerfstudio.scripts.eval, nerfstudio.utils.eval_utils as eval_utils\n"
        "from nerfstudio.configs.external_methods import ExternalMethodDummyTrainerConfig as Placeholder\n"
        "print(type(eval_utils).__name__, hasattr(eval_utils.eval_load_checkpoint, '__wrapped__'))\n"
        "print(hasattr(Placeholder.__post_init__, '__wrapped__'))\n"
    )
    result = run(sys.executable, "-c", code, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["module", "True", "True"]


def test_external_method_list_is_built_without_stack_inspection_and_still_offers_installs(monkeypatch, capsys):
    import inspect

    from nerfstudio.configs import external_methods

    from pad_nerfstudio.compat import fast_external_method_registry

    fast_external_method_registry()
    fast_external_method_registry()  # wrapped once
    placeholder = external_methods.ExternalMethodDummyTrainerConfig
    assert not hasattr(placeholder.__post_init__.__wrapped__, "__wrapped__")

    def no_stack(*args, **kwargs):
        raise AssertionError("inspect.stack called while building nerfstudio's external-method list")

    monkeypatch.setattr(inspect, "stack", no_stack)
    methods, descriptions = external_methods.get_external_methods()
    slugs = [slug for method in external_methods.external_methods for slug, _ in method.configurations]
    assert sorted(methods) == sorted(slugs) and set(descriptions) == set(slugs)
    monkeypatch.undo()

    # Built from anywhere else (tyro instantiating `ns-train <external method>`), it still prints how to install.
    method = next(m for m in external_methods.external_methods if not m.pip_package)  # no yes/no prompt
    with pytest.raises(SystemExit) as exit_info:
        placeholder(method_name=method.configurations[0][0], method=method)
    assert exit_info.value.code == 0
    assert "install" in capsys.readouterr().out.lower()
