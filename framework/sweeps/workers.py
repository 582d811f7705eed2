"""Workers of one `recoup sweep` study: which trials count, trials whose process died, waiting for
the others. Several workers (processes on one machine, or machines sharing an RDB URL) each run
`framework.sweeps.sweep.run_sweep` on the same study; these are the rules they share."""

from __future__ import annotations

import os
import socket
import time


def alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):  # someone else's process, or no pid recorded: leave it
        pass
    return True


def fail_dead_trials(study, log) -> None:
    """Trials left RUNNING by a process of this host that is gone: FAIL, with the tokens their run
    directories checkpointed (what a killed process trained past its newest checkpoint is not known,
    and not counted), and their point queued again so the next trial resumes those directories."""
    import optuna
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") != socket.gethostname() or alive(t.user_attrs.get("pid")):
            continue
        spent = sum(newest_checkpoint(d)["tokens"] - start for d, start in t.user_attrs.get("start_tokens", {}).items())
        optuna.trial.Trial(study, t._trial_id).set_user_attr("tokens", max(spent, 0))
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
        log(f"trial {t.number} was left running by process {t.user_attrs.get('pid')}, which is gone: "
            "marked failed, its point queued again (its run directory resumes)")


def claimed(study) -> int:
    """Finished trials, plus those another live worker of the study is running: what will count.
    With one worker this is the finished ones; with several, none of them starts a trial too many."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)))


WAIT_POLL_S = 10.0  # how often a worker that is done looks whether the others are


def wait_for_others(study, log) -> None:
    """Wait while other workers still run trials of the study, so that the summary holds them all.
    A worker that died leaves its trial RUNNING: on this host it is failed (and requeued), elsewhere
    the wait is the user's to stop."""
    from optuna.trial import TrialState

    said = False
    while running := study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        fail_dead_trials(study, log)
        if not said:
            log(f"waiting for {len(running)} trial(s) other workers are running")
            said = True
        time.sleep(WAIT_POLL_S)


def newest_checkpoint(run_dir: str) -> dict:
    """Step and tokens of a run's newest intact checkpoint, where a resume starts (0 and -1 without one)."""
    from framework.checkpoints import store as checkpoints

    ckpts = checkpoints.list_checkpoints(run_dir, intact_only=True) if os.path.isdir(
        checkpoints.checkpoint_dir(run_dir)) else []
    return {"step": ckpts[-1]["step"], "tokens": ckpts[-1]["tokens"]} if ckpts else {"step": -1, "tokens": 0}
