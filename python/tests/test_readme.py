"""The README's Python examples, run as doctests against a real broker."""

from __future__ import annotations

import doctest
import os
import re
from pathlib import Path

import pytest

from conftest import REPO, Broker


def examples() -> list[str]:
    readme = (REPO / "README.md").read_text()
    python = readme[readme.index("### Python: `import torrent_patron`") :]
    return re.findall(r"```pycon\n(.*?)```", python, re.S)


def test_the_readmes_examples_run(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = examples()
    assert len(blocks) == 2, "the README's Python section has two pycon examples"
    monkeypatch.chdir(broker.root)
    monkeypatch.setenv("TORRENT_PATRON_STATE", str(broker.state))
    (broker.root / "hello.txt").write_text("hello, world\n")
    # One after the other, as a reader types them: the second uses the first's import.
    names: dict[str, object] = {}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for number, block in enumerate(blocks):
        test = doctest.DocTestParser().get_doctest(block, names, f"README[{number}]", "README.md", 0)
        runner.run(test, clear_globs=False)
        names = test.globs
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted > 10
