"""Run in a subprocess with fake CPU devices (XLA_FLAGS set by the caller): trains the tiny run on
several meshes and prints, as JSON, how far each one's final parameters are from one device's."""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import numpy as np


def max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main(root: str) -> None:
    from framework.runner.build import train
    from framework.training.runs import open_run
    from tests.conftest import Crash, tiny_config

    base = tiny_config(f"{root}/one", mesh_shape=(1, 1), stops=(0.5, 1.0), ema_half_lives=(4_000,))
    runs = {"one": base,
            "data4": dataclasses.replace(base, out_dir=f"{root}/data4", mesh_shape=(-1, 1)),
            "fsdp2x2": dataclasses.replace(base, out_dir=f"{root}/fsdp2x2", mesh_shape=(2, 2))}
    # the Llama family (grouped-query attention, separate q/k/v): a model of the user's, laid out alike
    llama = dataclasses.replace(base, out_dir=f"{root}/llama-one", preset=None, ema_half_lives=(),
                                model=dataclasses.replace(base.model, factory="harness.bench_llama:tiny_llama"))
    runs.update({"llama-one": llama,
                 "llama-fsdp2x2": dataclasses.replace(llama, out_dir=f"{root}/llama-fsdp2x2", mesh_shape=(2, 2))})
    for cfg in runs.values():
        train(cfg, show_progress=False)
    # 1 -> 4: a one-device run, killed past 60% and resumed on four devices
    moved = dataclasses.replace(base, out_dir=f"{root}/moved")

    def crash(event):
        if event.kind == "step" and event.tokens > 0.6 * base.budget_tokens:
            raise Crash()

    try:
        train(moved, hooks=[crash], show_progress=False)
    except Crash:
        pass
    train(dataclasses.replace(moved, mesh_shape=(-1, 1)), resume=True, show_progress=False)
    params = {name: open_run(f"{root}/{name}").params() for name in (*runs, "moved")}  # 4 -> 1: read on one device
    ema = {name: open_run(f"{root}/{name}").params(average="ema-4000") for name in ("one", "data4")}
    out = {"devices": len(jax.devices()),
           "diff": {name: max_abs_diff(params["llama-one" if name.startswith("llama") else "one"], p)
                    for name, p in params.items()},
           "ema_diff": max_abs_diff(ema["one"], ema["data4"]),
           "sharding": str(jax.tree.leaves(params["data4"])[0].sharding),
           "scale": max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(params["one"]))}
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
