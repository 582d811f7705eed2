"""Nothing read from a config, manifest, data file or request reaches pickle, eval, exec or an import
the user did not ask for; manifests are validated; the server listens on loopback by default."""

import ast
import json
import os
import shutil

import pytest

from ensembles import artifact
from framework.app import cli
from framework.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("framework", "curricula", "ensembles")
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}
# The only places that import by name: `--config FILE|MODULE`, `recoup sweep --space FILE|MODULE` and
# `module:attr` curricula, pacings and scorers, which the user names (a saved config naming one needs
# --trust-imports, below).
IMPORTERS = {os.path.join("framework", "app", "python_files.py"), os.path.join("framework", "registry.py")}


def _sources():
    for pkg in PACKAGES:
        for here, _, names in os.walk(os.path.join(ROOT, pkg)):
            for n in names:
                if n.endswith(".py"):
                    path = os.path.join(here, n)
                    yield os.path.relpath(path, ROOT), ast.parse(open(path).read(), path)


def test_no_pickle_eval_or_exec_and_imports_by_name_only_where_users_name_them():
    for rel, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                module = (getattr(node, "module", None) or "").split(".")[0]
                names = {a.name.split(".")[0] for a in node.names} | {module}
                assert not names & UNSAFE_MODULES, f"{rel}:{node.lineno} imports {names & UNSAFE_MODULES}"
                if "importlib" in names:
                    assert rel in IMPORTERS, f"{rel}:{node.lineno} imports importlib"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "__import__", "compile"), f"{rel}:{node.lineno}"
            if isinstance(node, ast.keyword) and node.arg in ("allow_pickle", "shell"):
                assert not (isinstance(node.value, ast.Constant) and node.value.value), f"{rel}:{node.lineno}"


def test_cooldown_will_not_import_code_named_in_a_saved_config_unless_trusted(trained_run, tmp_path, capsys):
    run = str(tmp_path / "untrusted")
    shutil.copytree(trained_run[0].out_dir, run)
    path = os.path.join(run, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["curriculum"] = "os:system"
    with open(path, "w") as f:
        json.dump(cfg, f)
    assert cli.main(["cooldown", run, "--from", "0.5", "--tokens", "0.05", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "trust_imports" in err and "curriculum=os:system" in err
    assert not os.path.exists(run + "-cooldown0.5+0.05")


@pytest.mark.parametrize("member", [
    {"run": "/x", "step": "../../etc", "tokens": 1, "fraction": 0.5, "weight": 1.0},
    {"run": ["/x"], "step": 1, "tokens": 1, "fraction": 0.5, "weight": 1.0},
    {"run": "/x", "step": 1, "tokens": 1, "fraction": 0.5, "weight": float("nan")},
    "run/x",
])
def test_a_manifest_member_of_the_wrong_shape_is_refused_naming_it(tmp_path, member):
    with open(tmp_path / artifact.MANIFEST, "w") as f:
        json.dump({"format": artifact.FORMAT, "combine": "weights", "method": "single", "members": [member]}, f)
    with pytest.raises(ConfigError, match="member 0 must hold"):
        artifact.load_manifest(str(tmp_path))


def test_the_server_listens_on_loopback_unless_told_otherwise():
    args = cli.build_parser().parse_args(["serve", "some/run"])
    assert args.host == "127.0.0.1"
