"""The policy examples operators copy from the documentation are valid policies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from policies import PolicyFile

ROOT = Path(__file__).resolve().parents[2]


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("doc", ["README.md", "docs/alerts.md"])
def test_every_policy_example_in_the_docs_validates(doc: str) -> None:
    policies = [b for b in yaml_blocks(ROOT / doc) if b.startswith("pools:")]
    assert policies, f"no policy example found in {doc}"
    for block in policies:
        PolicyFile.model_validate(YAML(typ="safe").load(block))
