"""Every command of the ```bash blocks of README.md, docs/*.md and deploy/cpp/README.md names what exists and parses:
a user who copies a line gets the run it describes, not a missing config, a renamed flag or a key that
config/defaults.yaml no longer has.

- ``python train.py|test.py|predict.py --config FILE key=value ...`` (also after ``tools.launch``): FILE exists and
  ``load_config(FILE, overrides)`` accepts every override, as the entry point would;
- ``python -m tools.X --flag ...`` and ``python scripts/X.py --flag ...``: the module exists and every ``--flag`` is
  one its ``--help`` lists;
- ``make TARGET``: the Makefile has the target; a repository path (``config/...``, ``scripts/...``) exists.

Files a command writes or reads from the user's machine (archives, checkpoints, photos) are not checked, nor a
placeholder in capitals (``--config CONFIG``).
"""

import contextlib
import glob
import importlib
import importlib.util
import io
import os
import re
import shlex

import pytest

from tests.conftest import REPO
from util.config import load_config

ENTRY_POINTS = ("train.py", "test.py", "predict.py")
OVERRIDE = re.compile(r"^[a-z_]+(?:\.[a-z_0-9]+)+=")
REPO_PATH = re.compile(r"^(?:config|scripts|tools|deploy/cpp/[^b]|docs)[\w./-]*$")


DOCS = ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))),
        "deploy/cpp/README.md"]


def doc_commands(doc: str) -> list[str]:
    """The commands of a document's bash blocks: continuation lines joined, ``&&`` split, comment lines and
    lines that only set shell variables dropped."""
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            commands += [part.strip() for part in line.split("&&") if tokens_of(part)]
    return commands


def tokens_of(command: str) -> list[str]:
    """The command's words without what runs it: ``VAR=...``, ``nohup``, ``env``, ``time``; a ``torchrun`` or
    ``python -m torch.distributed.run`` launch becomes ``python SCRIPT ARGS`` (its own flags dropped)."""
    tokens = shlex.split(command, comments=True)
    while tokens and (re.match(r"^[A-Z_]+=", tokens[0]) or tokens[0] in ("nohup", "env", "time")):
        tokens.pop(0)
    launcher = tokens[:1] == ["torchrun"] or tokens[:3] in (["python", "-m", "torch.distributed.run"],
                                                             ["python3", "-m", "torch.distributed.run"])
    scripts = [i for i, t in enumerate(tokens) if t.endswith(".py")]
    if launcher and scripts:
        tokens = ["python", *tokens[scripts[0]:]]
    return tokens


def options_of(help_text: str) -> set[str]:
    """The option strings an argparse ``--help`` lists (``-h``, ``--config``, ...), as whole words."""
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))


def help_text(target: str) -> str:
    """What ``--help`` prints for ``tools.X`` (a module) or ``scripts/X.py`` (a file), run in this process."""
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location("readme_" + os.path.basename(target)[:-3],
                                                      os.path.join(REPO, target))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0, f"{target} --help exited {done.value.code}"
    return out.getvalue()


def check_entry_point(tokens: list[str], command: str) -> None:
    config = tokens[tokens.index("--config") + 1]
    if config.isupper():  # a placeholder: CONFIG
        return
    assert os.path.isfile(os.path.join(REPO, config)), f"{config}: no such config ({command})"
    overrides = [t for t in tokens if OVERRIDE.match(t)]
    load_config(os.path.join(REPO, config), overrides)  # a bad key or value raises, naming it


def check(command: str) -> list[str]:
    """What was checked of ``command`` (for the test's own coverage), failing on what does not hold."""
    tokens = tokens_of(command)
    done = []
    for token in tokens:
        path = token.split("=", 1)[-1]
        if REPO_PATH.match(path) and "/" in path:
            assert os.path.exists(os.path.join(REPO, path)), f"{path}: not in the repository ({command})"
            done.append("path")
    if tokens[0] == "make":
        with open(os.path.join(REPO, "Makefile"), encoding="utf-8") as f:
            targets = set(re.findall(r"^([\w-]+):", f.read(), flags=re.M))
        assert tokens[1] in targets, f"make {tokens[1]}: no such target"
        done.append("make")
    if tokens[0] in ("python", "python3"):
        if tokens[1] == "-m" or tokens[1].startswith("scripts/"):
            target = tokens[2] if tokens[1] == "-m" else tokens[1]
            listed = help_text(target)
            flags = [t.split("=", 1)[0] for t in tokens if t.startswith("--")]
            if target == "tools.launch":  # its own flags end where the script starts
                flags = [t for t in tokens[:tokens.index("train.py")] if t.startswith("--")]
            missing = [flag for flag in flags if flag not in options_of(listed)]
            assert missing == [], f"{target}: {missing} not in its --help ({command})"
            done.append("help")
    for entry in ENTRY_POINTS:  # also after tools.launch, torchrun, sbatch...
        if entry in tokens and "--config" in tokens:
            check_entry_point(tokens, command)
            done.append("config")
    return done


COMMANDS = doc_commands("README.md")


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_of_the_docs_names_what_exists_and_parses(doc):
    for command in doc_commands(doc):
        check(command)


def test_the_check_reads_every_block_and_fails_on_what_is_wrong():
    assert len(COMMANDS) >= 20 and any(c.startswith("python -m tools.launch") and "train.py" in c for c in COMMANDS)
    kinds = {kind for command in COMMANDS for kind in check(command)}
    assert kinds == {"path", "make", "help", "config"}
    with pytest.raises(AssertionError, match="config/voc2012/nothing.yaml"):
        check("python train.py --config config/voc2012/nothing.yaml")
    with pytest.raises(Exception, match="train.iter"):
        check("python train.py --config config/voc2012/pspnet18_kd.yaml train.iter=4")
    with pytest.raises(AssertionError, match=r"\['--no-such-flag'\]"):
        check("python -m tools.export --checkpoint x.pth --no-such-flag r18.pt")
    with pytest.raises(AssertionError, match="make nothing"):
        check("make nothing")
    with pytest.raises(AssertionError, match=r"\['--chec'\]"):  # a prefix of --checkpoint is not an option
        check("python -m tools.export --chec x.pth r18.pt")
    for launch in ("torchrun --standalone --nproc_per_node=8", "python -m torch.distributed.run --nproc_per_node 2",
                   "nohup python", "OMP_NUM_THREADS=1 time python"):
        with pytest.raises(Exception, match="train.iter"):
            check(f"{launch} train.py --config config/voc2012/pspnet18_kd.yaml train.iter=4")
