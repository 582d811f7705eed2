"""TensorBoard event files beside metrics.jsonl, so that TensorBoard shows every run of a directory.

    tensorboard --logdir runs/      # one run per run directory, named RUN/tensorboard

What: each metrics.jsonl `train` line becomes one event holding `train/loss`, `train/lr`,
`train/grad_norm` and `train/tokens_per_s`; each `eval` line one holding `eval/val_em`, `eval/val_loss`
and `eval/average_val_em/NAME` per weight average (a text run, which has no EM: `eval/val_loss` and
`eval/average_val_loss/NAME`): the same numbers, as float32 (TensorBoard's scalar).

The x axis (TensorBoard's "step") is counted tokens (framework.data.encoding.counted_tokens), recoup's
unit: budgets, schedules, stopping points and evaluations are placed in tokens, and runs of other batch
sizes, batch warmups or sequence lengths line up only on tokens. The optimizer step is in metrics.jsonl.

Where: RUN/tensorboard/. TensorBoard names a run by the directory that holds its event files, so
`--logdir runs/` shows one run per run directory either way; a folder of their own keeps the files of
every session (one event file each) out of the run directory's top level, where recoup's own files are,
and is one thing to delete or leave out of a copy.

Resume: as metrics.jsonl is cut back to the checkpoint a run resumes from (or rolls back to), every
event file of the run keeps only its events at or below that checkpoint's tokens (`truncate`, rewritten
atomically; a torn last record, from a kill, goes too). The session then writes a new file, named to sort
after the others (readers load a run's files in name order), that opens with a SessionLog START at the
checkpoint's tokens + 1: a TensorBoard already showing the run drops what it had read past that point
(the Python loader purges on START; the Rust data server drops any point at or past a newer point's
step anyway). So a crash and a resume show one curve, live or read afresh.

Writer: the `tensorboard` package's own record framing (`RecordWriter`, masked CRC32C) and protos
(`tensorboard.compat.proto`), what torch.utils.tensorboard writes with; no TensorFlow. tensorboard is a
dependency because it is also the viewer that `tensorboard --logdir` needs, and the tests read events
back with its EventAccumulator. Records go to a plain file, synchronously, each flushed as it is written
(one short record every log_every steps, 0.14-0.24 ms each on a 2-core CPU): a failed write (a full disk) raises an
OSError in the training loop, where a failed metrics.jsonl write raises, not in the background thread
of tensorboard's EventFileWriter on some later call. A kill loses at most the record being written.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.summary.writer.record_writer import RecordWriter

EVENTS_DIR = "tensorboard"  # RUN/tensorboard/: the event files of every session of the run
TRAIN_FIELDS = ("loss", "lr", "grad_norm", "tokens_per_s")  # metrics.jsonl train-line fields -> train/FIELD
EVAL_FIELDS = ("val_em", "val_loss")  # eval-line fields -> eval/FIELD
_STAMP = re.compile(r"events\.out\.tfevents\.(\d+)\.")


def events_dir(run_dir: str) -> str:
    return os.path.join(run_dir, EVENTS_DIR)


def event_files(run_dir: str) -> list[str]:
    """The run's event files in the order TensorBoard reads them (by name)."""
    d = events_dir(run_dir)
    return sorted(os.path.join(d, n) for n in os.listdir(d) if _STAMP.match(n)) if os.path.isdir(d) else []


def train_scalars(line: Mapping[str, Any]) -> dict[str, float | None]:
    """A metrics.jsonl train line's scalars, by tag."""
    return {f"train/{k}": line[k] for k in TRAIN_FIELDS}


def eval_scalars(line: Mapping[str, Any]) -> dict[str, float | None]:
    """A metrics.jsonl eval line's (a checkpoint's metadata's) scalars, by tag."""
    return {**{f"eval/{k}": line[k] for k in EVAL_FIELDS},  # val_em None (a text run): no point
            **{f"eval/average_val_em/{name}": em for name, em in line.get("average_val_em", {}).items()},
            **{f"eval/average_val_loss/{name}": x for name, x in line.get("average_val_loss", {}).items()}}


class EventLog:
    """One training session's event file. It opens with a restart marker at `start_tokens` + 1: a
    reader drops whatever it has past the tokens this session starts from (an earlier session's)."""

    def __init__(self, run_dir: str, start_tokens: int):
        os.makedirs(events_dir(run_dir), exist_ok=True)
        self.path = os.path.join(events_dir(run_dir), _new_name(run_dir))
        self._out = RecordWriter(open(self.path, "wb"))
        self._add(event_pb2.Event(file_version="brain.Event:2",
                                  source_metadata=event_pb2.SourceMetadata(writer="recoup")))
        self._add(event_pb2.Event(step=start_tokens + 1,
                                  session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def scalars(self, tokens: int, values: Mapping[str, float | None]) -> None:
        """One event at `tokens` holding every value that is not None (a window with no finite loss)."""
        self._add(event_pb2.Event(step=tokens, summary=summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=tag, simple_value=v) for tag, v in values.items() if v is not None])))

    def _add(self, event: event_pb2.Event) -> None:
        event.wall_time = time.time()
        self._out.write(event.SerializeToString())
        self._out.flush()

    def close(self) -> None:
        if not self._out.closed:
            self._out.close()


def _new_name(run_dir: str) -> str:
    """TensorBoard's writers' name (seconds since the epoch, host, process), sorting after every file
    already there: two sessions may start within one second, or after the clock went back."""
    stamps = [int(_STAMP.match(os.path.basename(p)).group(1)) for p in event_files(run_dir)]
    stamp = max([int(time.time()), *(s + 1 for s in stamps)])
    return f"events.out.tfevents.{stamp:010d}.{socket.gethostname()}.{os.getpid()}"


def truncate(run_dir: str, tokens: int) -> None:
    """Drop every event past `tokens` from the run's event files (they will be redone), and a torn or
    damaged tail. Each file changed is replaced whole, so a kill here leaves it as it was or cut."""
    d = events_dir(run_dir)
    for name in os.listdir(d) if os.path.isdir(d) else []:
        if name.startswith(".truncating-"):  # a kill while truncating: the file it was cutting is whole
            os.remove(os.path.join(d, name))
    for path in event_files(run_dir):
        with open(path, "rb") as f:
            data = f.read()
        kept = b"".join(r for r in records(data) if event_pb2.Event.FromString(r[12:-4]).step <= tokens)
        if len(kept) != len(data):
            tmp = os.path.join(os.path.dirname(path), f".truncating-{os.getpid()}")  # not a name readers load
            with open(tmp, "wb") as f:
                f.write(kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)


def records(data: bytes) -> Iterator[bytes]:
    """The whole records (header, event, checksum) of an event file's bytes, up to the first torn or
    damaged one: a kill while a record was written leaves a tail shorter than its length says."""
    at = 0
    while at + 12 <= len(data):
        header, (n,) = data[at:at + 8], struct.unpack("<Q", data[at:at + 8])
        end = at + 12 + n + 4
        if (end > len(data) or struct.unpack("<I", data[at + 8:at + 12])[0] != masked_crc32c(header)
                or struct.unpack("<I", data[end - 4:end])[0] != masked_crc32c(data[at + 12:end - 4])):
            return
        yield data[at:end]
        at = end
