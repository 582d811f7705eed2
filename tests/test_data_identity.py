"""A run records what its data was (RUN/data.json); commands that read the data again refuse other
data unless told to go on, and a relative data path works from any directory (issue 21)."""

import json
import os

import pytest

from framework.app.cli import main
from framework.data import identity

ROWS = [{"prompt": f"{a}*{b}=", "answer": str(a * b)} for a in range(2, 40) for b in range(2, 12)]
TRAIN = ["--preset", "tiny", "--budget-tokens", "6k", "--batch-size", "16", "--stops", "0.5,1.0", "--val-size",
         "40", "--test-size", "60", "--max-seq-len", "32", "--no-progress"]


@pytest.fixture(scope="module")
def run_on_a_file(tmp_path_factory):
    """A tiny run trained on data/mul.jsonl, given relative to the directory it was trained in."""
    root = tmp_path_factory.mktemp("identity")
    (root / "data").mkdir()
    with open(root / "data" / "mul.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in ROWS)
    here = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", "--data", "data/mul.jsonl", *TRAIN, "--out", "run"]) == 0
    finally:
        os.chdir(here)
    return root


def test_the_record_holds_the_resolved_path_the_file_hash_and_each_split(run_on_a_file):
    rec = identity.read(str(run_on_a_file / "run"))
    assert rec["data_path"] == str(run_on_a_file / "data" / "mul.jsonl")
    assert rec["data_sha256"] == identity.fingerprint_path(rec["data_path"])
    assert {k: v["rows"] for k, v in rec["splits"].items()} == {"train": len(ROWS) - 100, "validation": 40,
                                                                 "test": 60}


def test_a_relative_data_path_works_from_another_directory(run_on_a_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # data/mul.jsonl does not exist here
    assert main(["eval", str(run_on_a_file / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 60


def test_changed_data_is_refused_by_eval_and_resume_unless_allowed(run_on_a_file, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(run_on_a_file, root)
    run = str(root / "run")
    rec = identity.read(run)
    identity.write(run, {**rec, "data_path": str(root / "data" / "mul.jsonl")})  # the copy's own file
    with open(root / "data" / "mul.jsonl", "a") as f:  # one more row: the silent contamination
        f.write(json.dumps({"prompt": "99*99=", "answer": "9801"}) + "\n")
    capsys.readouterr()
    assert main(["eval", run, "--json"]) == 2
    err = capsys.readouterr().err
    assert "data: " in err and "mul.jsonl has changed" in err and "--allow-changed-data" in err
    assert main(["eval", run, "--json", "--allow-changed-data"]) == 0
    out, err = capsys.readouterr()
    assert any("has changed" in c for c in json.loads(out)["data_changed"]) and "NOTE: the data changed" in err
    assert main(["report", run, "--out", str(root / "rep"), "--max-cost", "1"]) == 2  # report refuses too...
    assert "was trained on other data" in capsys.readouterr().err
    assert main(["report", run, "--out", str(root / "rep"), "--max-cost", "1", "--allow-changed-data"]) == 0
    assert "NOTE: the data changed" in capsys.readouterr().err  # ...and says so in report.md when allowed
    assert "The data changed since these runs were trained" in (root / "rep" / "report.md").read_text()
    # tune-stopping and serve read no examples: they compare the file's hash
    assert main(["tune-stopping", run, "--price", "2", "--json"]) == 2
    assert "mul.jsonl has changed since it trained" in capsys.readouterr().err
    assert main(["tune-stopping", run, "--price", "2", "--json", "--allow-changed-data"]) == 0
    assert json.loads(capsys.readouterr().out)["data_changed"]
    assert main(["serve", run, "--port", "1"]) == 2  # refused before any port is bound or model loaded
    assert "has changed since it trained" in capsys.readouterr().err
    assert identity.check_file([run], allow=True)
    os.rename(root / "data" / "mul.jsonl", root / "data" / "moved.jsonl")  # a serving machine holds no data
    assert identity.check_file([run], allow=False) == []
    os.rename(root / "data" / "moved.jsonl", root / "data" / "mul.jsonl")
    here = os.getcwd()
    os.chdir(root)
    try:
        argv = ["train", "--data", "data/mul.jsonl", *TRAIN, "--out", "run", "--resume"]
        assert main(argv) == 2 and "was trained on other data" in capsys.readouterr().err
    finally:
        os.chdir(here)


def test_a_built_in_task_records_its_splits_and_an_unchanged_run_reads_cleanly(trained_run):
    cfg, _ = trained_run
    rec = identity.read(cfg.out_dir)
    assert rec["data_path"] is None and rec["data_sha256"] is None and set(rec["splits"]) == {"train", "validation",
                                                                                            "test"}
    from framework.training.runs import open_run

    run = open_run(cfg.out_dir)
    assert len(run.split("test")) == cfg.data.test_size and run.data_changes == []


def test_differences_name_what_changed():
    was = {"data_path": "/d.jsonl", "data_sha256": "a" * 64, "splits": {"test": {"rows": 60, "sha256": "x"}}}
    now = {"data_path": "/d.jsonl", "data_sha256": "b" * 64, "splits": {"test": {"rows": 61, "sha256": "y"}}}
    assert identity.differences(was, was) == []
    changes = identity.differences(was, now)
    assert changes[0].startswith("/d.jsonl has changed") and changes[1] == "the test split differs (61 rows, 60 then)"


def test_rows_added_after_training_move_no_prompt_between_splits(run_on_a_file, tmp_path):
    """Issue 21's contamination: with splits by hash and the run's recorded cuts, the prompts the run
    held out are still held out after rows are added, and none of its training prompts is in test."""
    import shutil

    from framework.training.runs import open_run

    root = tmp_path / "grown"
    shutil.copytree(run_on_a_file, root)
    run = str(root / "run")
    rec = identity.read(run)
    assert len(rec["split_cuts"]) == 2
    before = {s: set(open_run(run).split(s).prompts) for s in ("train", "validation", "test")}
    identity.write(run, {**rec, "data_path": str(root / "data" / "mul.jsonl")})
    with open(root / "data" / "mul.jsonl", "a") as f:
        f.writelines(json.dumps({"prompt": f"{a}*{b}=", "answer": str(a * b)}) + "\n"
                     for a in range(40, 70) for b in range(2, 12))
    grown = open_run(run, allow_changed_data=True)
    after = {s: set(grown.split(s).prompts) for s in ("train", "validation", "test")}
    assert grown.data_changes and any("has changed" in c for c in grown.data_changes)
    for s in after:
        assert before[s] <= after[s], f"a {s} prompt moved"
    assert not after["test"] & before["train"] and len(after["test"]) > len(before["test"])
