"""A small text corpus made here, with no download, for the README's `recoup train --text` example and
for trying the text path: one document per entity of a multihop knowledge base (framework.data.tasks),
its facts written as sentences, in .txt files (a blank line between documents), a .jsonl file or a
.parquet file. `--format qa` writes the same facts as prompt/answer pairs instead ("The friend of Kesu
is " -> "Tomer"), a file to mix into a text run (`--mix qa:FILE=SHARE`).

    python -m harness.tiny_corpus corpus/ [--entities 400] [--format txt|jsonl|parquet|qa]
"""

from __future__ import annotations

import argparse
import json
import os
import random


def facts(entities: int = 400, seed: int = 0) -> list[list[tuple[str, str]]]:
    """Per entity, the facts its document states, in their seeded order: ("The friend of Kesu is ", "Tomer")."""
    from framework.data.tasks import knowledge_base

    kb = knowledge_base(seed, entities, 12)
    rng = random.Random(seed)
    out = []
    for e in kb.entities:
        stated = [(f"The {r} of {e} is ", kb.links[r][e]) for r in kb.relations]
        rng.shuffle(stated)
        out.append(stated[: rng.randint(3, len(stated))])
    return out


def documents(entities: int = 400, seed: int = 0) -> list[str]:
    """One paragraph per entity: the facts it states, each as a sentence."""
    return [" ".join(f"{prompt}{answer}." for prompt, answer in stated) for stated in facts(entities, seed)]


def write_qa(directory: str, entities: int = 400) -> str:
    """The documents' facts as prompt/answer pairs in DIRECTORY/facts.jsonl; its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "facts.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"prompt": p, "answer": a}) + "\n" for stated in facts(entities) for p, a in stated)
    return path


def write(directory: str, docs: list[str], fmt: str = "txt", files: int = 4) -> list[str]:
    """`docs` under `directory` in `files` .txt files, or one .jsonl or .parquet file; the paths written."""
    os.makedirs(directory, exist_ok=True)
    if fmt == "txt":
        paths = [os.path.join(directory, f"part{i:02d}.txt") for i in range(files)]
        for i, path in enumerate(paths):
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n\n".join(docs[i::files]) + "\n")
        return paths
    path = os.path.join(directory, f"corpus.{fmt}")
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": docs}), path, row_group_size=64)
    return [path]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("directory")
    p.add_argument("--entities", type=int, default=400, help="documents: one per entity (default 400)")
    p.add_argument("--format", choices=("txt", "jsonl", "parquet", "qa"), default="txt",
                   help="qa: the facts as prompt/answer pairs, not documents")
    args = p.parse_args(argv)
    if args.format == "qa":
        path = write_qa(args.directory, args.entities)
        print(f"wrote {sum(map(len, facts(args.entities))):,} facts of {args.entities} documents to {path}")
        return
    paths = write(args.directory, documents(args.entities), args.format)
    print(f"wrote {args.entities} documents to {', '.join(paths)}")


if __name__ == "__main__":
    main()
