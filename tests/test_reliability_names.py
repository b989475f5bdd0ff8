"""Run names are names: --name is one safe path component, refused before anything is created, and
--overwrite removes exactly one run folder inside --out."""

from __future__ import annotations

import json
import os

import pytest
from cli_utils import invoke, one_line_error

from genbench.bench.record import results
from genbench.core.errors import UserError


def tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_a_dot_dot_name_with_overwrite_deletes_nothing(tmp_path):
    """The issue's data loss: --name 'keep/..' --overwrite emptied the whole --out folder."""
    res = tmp_path / "res"
    (res / "vae-smoke-s0-keep").mkdir(parents=True)
    (res / "other-run").mkdir()
    before = tree(tmp_path)
    result = invoke(
        "run", "--models", "vae", "--profile", "smoke", "--out", res, "--name", "keep/..", "--overwrite",
        "--max-steps", "1",
    )  # fmt: skip
    assert "--name" in one_line_error(result, 2)
    assert tree(tmp_path) == before


def test_a_name_cannot_escape_out(tmp_path):
    """The issue's path traversal: --name 'keep/../../escaped' wrote a whole run outside --out."""
    res = tmp_path / "res"
    (res / "vae-smoke-s0-keep").mkdir(parents=True)
    before = tree(tmp_path)
    result = invoke(
        "run", "--models", "vae", "--profile", "smoke", "--out", res, "--name", "keep/../../escaped",
        "--max-steps", "1",
    )  # fmt: skip
    assert "--name" in one_line_error(result, 2)
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "name, why",
    [("..", "not a run name"), (".hidden", "not a run name"), ("", "empty"), ("a/b", "not a run name"),
     ("a\\b", "not a run name"), ("-rf", "not a run name"), ("x" * 65, "at most 64")],
)  # fmt: skip
def test_unsafe_names_are_usage_errors(name, why, tmp_path):
    line = one_line_error(
        invoke("run", "--models", "gan", "--out", tmp_path / "r", "--name", name, "--dry-run"), 2
    )
    assert "--name" in line and why in line
    assert not (tmp_path / "r").exists()


def test_safe_names_pass():
    for name in ("keep", "a.b", "lr-1e-3_run2", "0", "x" * 64):
        assert results.check_run_name(name) == name


def _fake_run(folder, text="{}"):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(text)
    (folder / "history.csv").write_text("step\n")


def test_overwrite_replaces_one_run_folder_and_nothing_else(tmp_path):
    _fake_run(tmp_path / "gan-smoke-s0-a")
    _fake_run(tmp_path / "gan-smoke-s0-b")
    run_dir = results.create_run_dir(tmp_path, "gan-smoke-s0-a", overwrite=True)
    assert sorted(os.listdir(run_dir)) == ["checkpoints"]
    assert (tmp_path / "gan-smoke-s0-b" / "history.csv").exists()
    with pytest.raises(UserError, match="exists; pick another --name"):
        results.create_run_dir(tmp_path, "gan-smoke-s0-b")


def test_overwrite_refuses_what_is_not_a_run_folder(tmp_path):
    precious = tmp_path / "elsewhere"
    _fake_run(precious)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gan-smoke-s0-link").symlink_to(precious)
    (tmp_path / "out" / "gan-smoke-s0-notes").mkdir()
    (tmp_path / "out" / "gan-smoke-s0-notes" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a folder"):
        results.create_run_dir(tmp_path / "out", "gan-smoke-s0-link", overwrite=True)
    with pytest.raises(UserError, match="not a run folder"):
        results.create_run_dir(tmp_path / "out", "gan-smoke-s0-notes", overwrite=True)
    with pytest.raises(ValueError, match="one path component"):
        results.create_run_dir(tmp_path / "out", "../elsewhere", overwrite=True)
    assert (precious / "config.json").exists() and (
        tmp_path / "out" / "gan-smoke-s0-notes" / "notes.txt"
    ).exists()


def test_overwrite_refuses_a_run_in_use(tmp_path):
    run_dir = tmp_path / "gan-smoke-s0-a"
    _fake_run(run_dir, json.dumps({"run_id": "gan-smoke-s0-a"}))
    with results.run_lock(run_dir), pytest.raises(results.RunInUse, match="run in use"):
        results.create_run_dir(tmp_path, "gan-smoke-s0-a", overwrite=True)
    assert (run_dir / "history.csv").exists()


def test_eval_and_sample_check_names_and_seeds_as_run_does(tmp_path):
    """bench eval's --name becomes a folder name and bench sample's --seed a generator seed: the
    same rules as bench run's, checked before anything is read or written."""
    samples = tmp_path / "s.npz"
    samples.write_bytes(b"")
    result = invoke("eval", "--samples", samples, "--name", "../up", "--results", tmp_path / "r")
    assert "--name" in one_line_error(result, 2) and not (tmp_path / "r").exists()
    result = invoke("sample", tmp_path, "-n", "4", "--out", tmp_path / "x.npz", "--seed", "4294967296")
    assert "--seed" in one_line_error(result, 2) and not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("name", ["a/b", "..", "-lead", "a b"])
def test_an_evaluation_name_follows_the_run_name_rule_from_python_too(name, tmp_path):
    """EvalRequest.name becomes part of a folder name (RUN_DIR+eval-NAME): the one rule of run names."""
    from genbench.bench.commands import scoring

    request = scoring.EvalRequest(run_dir=tmp_path, name=name)
    with pytest.raises(UserError, match=r"--name: .* is not a run name"):
        scoring.check_request(request)
