"""The README's command synopses against the parser: every flag a ```bash block gives a `recoup`
command exists for that command, and the names it lists for presets and schedules are real."""

import os
import re

from framework.app.cli import build_parser
from framework.config import PRESETS
from framework.training.registry import DECAY_SHAPES, SCHEDULES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commands() -> list[str]:
    """Each `recoup ...` command in the README's bash blocks, continuation lines joined."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        text = re.sub(r"\\\n\s*", " ", block)  # a backslash continues the line
        text = re.sub(r"\n\s+\[", " [", text)  # so do the synopsis's indented option lines
        for line in text.splitlines():
            for part in line.split("·"):
                part = part.split("#")[0].strip()
                if part.startswith("recoup "):
                    out.append(part)
    return out


def _subparser(parser, words: list[str]):
    """The parser of `recoup WORDS...` (nested commands too), and the words it did not consume."""
    while words:
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs or words[0].split("|")[0] not in subs[0].choices:
            break
        parser, words = subs[0].choices[words[0].split("|")[0]], words[1:]
    return parser


def test_every_flag_in_the_readme_exists_for_its_command():
    commands = _commands()
    assert len(commands) >= 10 and any(c.startswith("recoup cooldown RUN_DIR") for c in commands)
    wrong = []
    for command in commands:
        parser = _subparser(build_parser(), command.split()[1:])
        known = {s for a in parser._actions for s in a.option_strings}
        wrong += [f"{command[:40]}...: {flag}" for flag in re.findall(r"(--[a-z][a-z0-9-]*)", command)
                  if flag not in known]
    assert not wrong, "README flags the parser does not have:\n" + "\n".join(wrong)


def test_the_names_the_synopsis_lists_are_the_real_ones():
    synopsis = next(c for c in _commands() if c.startswith("recoup train --task"))
    assert re.search(r"--preset (\S+)", synopsis).group(1).split("|") == list(PRESETS)
    assert set(re.search(r"--schedule (\S+)", synopsis).group(1).split("|")) <= set(SCHEDULES)
    cooldown = next(c for c in _commands() if c.startswith("recoup cooldown RUN_DIR"))
    assert re.search(r"--shape (\S+)", cooldown).group(1).split("|") == list(DECAY_SHAPES)
