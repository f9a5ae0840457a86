"""deploy/container/Containerfile, checked without a builder (no registry here to pull a base image
from): its instructions parse, it builds on Debian 12, everything it copies from the context exists
and passes .containerignore, the extras it installs exist, it ends as a non-root user and runs the
same command as the systemd unit."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions with their first line; continuation lines joined, comments dropped. Raises
    ValueError naming the line of anything that is not an instruction."""
    out: list[Instruction] = []
    pending: tuple[int, str] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if pending is None:
            keyword, _, rest = line.partition(" ")
            if keyword.upper() not in INSTRUCTIONS:
                raise ValueError(f"{CONTAINERFILE.name}:{n}: unknown instruction {keyword!r}")
            pending = (n, line)
        else:
            pending = (pending[0], pending[1] + " " + line)
        if pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1].rstrip())
            continue
        first, body = pending
        keyword, _, rest = body.partition(" ")
        out.append(Instruction(first, keyword.upper(), rest.strip()))
        pending = None
    if pending is not None:
        raise ValueError(f"{CONTAINERFILE.name}:{pending[0]}: continued past the end of the file")
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(CONTAINERFILE.read_text())


def args_of(instructions: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in instructions if i.keyword == keyword]


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args_of(instructions, "ARG") if "=" in a)


def test_it_parses_and_the_parser_refuses_nonsense(instructions: list[Instruction]) -> None:
    assert [i.keyword for i in instructions].count("FROM") == 2
    with pytest.raises(ValueError, match=r":2: unknown instruction 'COPPY'"):
        parse("FROM x\nCOPPY a b\n")
    with pytest.raises(ValueError, match=":1: continued past the end"):
        parse("RUN a \\\n")


def test_every_stage_is_debian_12(instructions: list[Instruction]) -> None:
    defaults = build_args(instructions)
    for base in args_of(instructions, "FROM"):
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], base.split()[0])
        assert image.endswith("-bookworm") or ":bookworm" in image, image


def ignored(path: str, patterns: list[str]) -> bool:
    """.containerignore's verdict (last matching pattern wins; `!` re-includes; a directory's
    pattern covers what is in it)."""
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
        p = p.removeprefix("**/")
        if any(fnmatch.fnmatch(pre, p) or fnmatch.fnmatch(pre.rsplit("/", 1)[-1], p) for pre in prefixes):
            verdict = not negate
    return verdict


def test_what_it_copies_from_the_context_exists_and_is_not_ignored(instructions: list[Instruction]) -> None:
    patterns = [ln.strip() for ln in (ROOT / ".containerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    copies = [i for i in instructions if i.keyword in ("COPY", "ADD") and "--from=" not in i.args]
    assert copies
    for copy in copies:
        *sources, _dest = copy.args.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Containerfile:{copy.line}: {src} does not exist"
            assert not ignored(src, patterns), f"Containerfile:{copy.line}: .containerignore drops {src}"
            for f in (ROOT / src).rglob("*.py") if (ROOT / src).is_dir() else []:
                rel = str(f.relative_to(ROOT))
                assert not ignored(rel, patterns), rel
    assert ignored(".venv/bin/python", patterns) and ignored("scaler/__pycache__/cli.cpython-311.pyc", patterns)


def test_it_installs_extras_the_package_has(instructions: list[Instruction]) -> None:
    extras = set(build_args(instructions)["EXTRAS"].split(","))
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert extras and extras <= declared, extras - declared
    run = " ".join(args_of(instructions, "RUN"))
    for package in ("iproute2", "nftables", "ca-certificates"):
        assert re.search(rf"apt-get install[^&]*\b{package}\b", run), package


def test_it_runs_as_scaler_what_the_unit_runs(instructions: list[Instruction]) -> None:
    assert args_of(instructions, "USER")[-1] == "scaler"
    assert "useradd --system --uid 999 --gid scaler" in " ".join(args_of(instructions, "RUN"))
    entrypoint = json.loads(args_of(instructions, "ENTRYPOINT")[-1])
    cmd = json.loads(args_of(instructions, "CMD")[-1])
    unit = (ROOT / "deploy" / "systemd" / "scaler.service").read_text()
    exec_start = re.search(r"^ExecStart=/opt/scaler/bin/(.*)$", unit, re.M)
    assert exec_start is not None
    assert entrypoint + cmd == exec_start.group(1).split()
    assert "/opt/scaler/bin" in " ".join(args_of(instructions, "ENV"))
