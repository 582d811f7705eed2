"""`recoup export`: a checkpoint, an EMA or a weight-average ensemble as a Hugging Face checkpoint
directory that transformers and vLLM load unchanged (a LlamaForCausalLM with the run's tokenizer:
recoup's byte tokenizer written as tokenizer.json, or the copy of the Hugging Face tokenizer it
trained with); an output ensemble as its members' checkpoints and a manifest.

    recoup export runs/demo --hf out/demo                # the newest checkpoint
    recoup export runs/demo --step 1200 --average ema-20000 --hf out/ema
    recoup export runs/demo-ens --hf out/ens             # a weight average: one model

recoup's Transformer (gated MLP) is written as a Llama (framework.models.convert); a model of one's
own exports when it is a framework.models.llama.Llama.
"""

from __future__ import annotations

import json
import os
import sys

from framework.app.train_commands import TRUST_HELP, require_trust, trained_runs
from framework.errors import ConfigError


def generation_ids(tok) -> dict:
    """The ids transformers' generate() needs from the tokenizer: BOS (if it has one), EOS (all that end
    an answer), PAD."""
    eos = list(tok.ends.stop)
    return {**({"bos_token_id": tok.bos} if tok.bos is not None else {}),
            "eos_token_id": eos[0] if len(eos) == 1 else eos, "pad_token_id": tok.pad}


def _llama(run, params):
    """`params` of `run`'s model as a Llama."""
    from flax import nnx

    from framework.models import convert
    from framework.models.llama import Llama

    model = nnx.merge(run.graphdef, params)
    if isinstance(model, Llama):  # a Hugging Face model's fine-tune, or a factory's Llama
        return model
    if run.cfg.model.factory is None:
        return convert.as_llama(run.cfg.model, params)
    raise ConfigError("run_dir", f"{run.run_dir} trains a {type(model).__name__} of your own "
                                 f"({run.cfg.model.factory}); recoup exports its Transformer and "
                                 "framework.models.llama.Llama, whose Hugging Face layout it knows")


def write_checkpoint(model, out: str, dtype: str, tok) -> list[str]:
    """`model` (a Llama) with the tokenizer `tok` into `out`, generation ids in its configs."""
    from framework.models import hf

    written = [str(p) for p in hf.save(model, out, dtype=dtype)]
    written += tok.write_hf(out)  # first: a copied generation_config.json is merged into below
    ids = generation_ids(tok)
    for name in ("config.json", "generation_config.json"):
        path = os.path.join(out, name)
        config = {}
        if os.path.isfile(path):
            with open(path) as f:
                config = json.load(f)
        with open(path, "w") as f:
            json.dump({**config, **ids}, f, indent=2)
    return list(dict.fromkeys([*written, os.path.join(out, "generation_config.json")]))


def export(path: str, out: str, step: int | None = None, average: str | None = None, dtype: str = "float32",
           log=print) -> dict:
    """Export the run or ensemble directory `path` into `out` (see the module docstring)."""
    from ensembles import artifact
    from framework.training.runs import open_run

    if os.path.isfile(os.path.join(path, artifact.MANIFEST)):
        manifest = artifact.load_manifest(path)
        c = artifact.candidate_of(manifest)
        run = open_run(c.members[0].run)
        if c.one_model:
            write_checkpoint(_llama(run, artifact.saved_average(path, run)), out, dtype, run.tokenizer)
            return {"out": out, "kind": "weight average", "members": [m.label for m in c.members]}
        dirs = []
        for i, m in enumerate(c.members):
            member_run = open_run(m.run)
            dirs.append(os.path.join(out, f"member-{i}"))
            write_checkpoint(_llama(member_run, member_run.params(m.step, m.average)), dirs[-1], dtype,
                             member_run.tokenizer)
        with open(os.path.join(out, "ensemble.json"), "w") as f:
            json.dump({"method": c.method, "combine": c.combine, "weights": list(c.weights),
                       "members": [os.path.basename(d) for d in dirs]}, f, indent=2)
        log(f"NOTE: {path} is an output ensemble ({c.combine}, {len(dirs)} forward passes per token), not one "
            "model: its members are written as checkpoints of their own and ensemble.json says how recoup "
            "combines them; only a weight average exports as a single model", file=sys.stderr)
        return {"out": out, "kind": f"output ensemble ({c.combine})", "members": dirs}
    run = open_run(path)
    from framework.checkpoints.store import resolve_step

    step = resolve_step(path, step)
    write_checkpoint(_llama(run, run.params(step, average)), out, dtype, run.tokenizer)
    return {"out": out, "kind": average or "checkpoint", "step": step}


def _cmd_export(args) -> int:
    if args.dtype not in ("float32", "bfloat16"):
        raise ConfigError("dtype", f"{args.dtype!r} cannot be exported", ("float32", "bfloat16"))
    require_trust(trained_runs([args.path]), args.trust_imports)
    result = export(args.path, args.hf, args.step, args.average, args.dtype)
    print(f"wrote {result['out']}: {result['kind']} as a Hugging Face checkpoint "
          "(AutoModelForCausalLM.from_pretrained and AutoTokenizer load it)")
    return 0


def add_parser(sub) -> None:
    e = sub.add_parser("export", help="write a checkpoint or ensemble as a Hugging Face checkpoint directory")
    e.add_argument("path", metavar="RUN_OR_ENS_DIR")
    e.add_argument("--hf", required=True, metavar="DIR", help="the directory to write")
    e.add_argument("--step", type=int, help="a run's checkpoint step (default: the newest)")
    e.add_argument("--average", help="a weight average the run kept at that step (e.g. ema-20000)")
    e.add_argument("--dtype", default="float32", help="float32|bfloat16 on disk (default float32)")
    e.add_argument("--trust-imports", action="store_true", help=TRUST_HELP)
    e.set_defaults(func=_cmd_export)
