"""The README's recipes, and those of the documents it links, work as written against a live server.

Which blocks: every fenced block of ``README.md`` and of the Markdown files reachable from it by
relative links (``tests/markdown_blocks.py``). Blocks in ``bash``/``sh``/``shell``, ``python`` and
``console`` run; other languages (``text``, ``dockerfile``, ``promql`` ...) are not commands. A block
that cannot run on the CI machine carries a marker on the line before its fence::

    <!-- recipe: skip gpu: builds TensorRT engines -->

and is reported as skipped with that reason (kinds: gpu, hub, docker, long, sketch, cluster); it is still
checked for what breaks it before it runs (``bash -n``, a backslash that continues nothing,
``compile``). A fence without a language, or a marker of an unknown kind, fails the test; an unmarked
block that cannot run here fails like any broken recipe.

How a block runs: as its reader runs it after ``make venv`` and ``. .venv/bin/activate``, in the
repository root, with the venv's ``bin`` first on PATH and no LD_LIBRARY_PATH. Shell blocks run
under ``bash -e -o pipefail`` with ``curl`` given ``--fail-with-body`` (so an HTTP error fails the block);
Python blocks through ``python -`` (the repository root on ``sys.path``, as in an interactive
session); in a console block each ``$ command`` runs and each output line shown after it must be
printed, numbers aside. Blocks run in document order, one document after another, so a later block
may use a file an earlier one wrote, as the reader's would; a block that leaves a file git neither
tracks nor ignores in the checkout fails (recipes write under the git-ignored ``out/``).

The server: one for this module, ``python -m export.launcher`` (what ``make serve`` runs) on the
session's tiny repository, on free ports, with an admin key that blocks see as ``$ADS_ADMIN_KEY``.
Just before a block runs, the documented addresses ``localhost`` / ``127.0.0.1`` ``:8000`` (HTTP),
``:8001`` (gRPC) and ``:8002`` (metrics) in its text are rewritten to that server's ports
(``tests/recipe_runner.py``); the Markdown stays as the reader sees it.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.markdown_blocks import SKIP_KINDS, Block, MarkdownError, blocks_of, linked_documents
from tests.recipe_runner import Server, reader_env, run_block, syntax_problems

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK_TIMEOUT_S = 900.0  # `make demo` exports the tiny preset first: minutes on a loaded 2-core machine


def _collect() -> tuple[list[Block], str | None]:
    try:
        return [b for doc in linked_documents(README, ROOT) for b in blocks_of(doc)], None
    except MarkdownError as exc:
        return [], str(exc)


BLOCKS, PARSE_ERROR = _collect()
RUNNABLE = [b for b in BLOCKS if b.runnable]


def test_the_documents_have_runnable_recipes_and_every_fence_says_its_language():
    assert PARSE_ERROR is None, PARSE_ERROR
    documents = {b.document.relative_to(ROOT).as_posix() for b in RUNNABLE}
    assert "README.md" in documents and len(documents) > 1, f"blocks found only in {sorted(documents)}"


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.where(ROOT) for b in RUNNABLE])
def test_block_has_nothing_that_stops_it_before_it_runs(block: Block):
    assert not syntax_problems(block), f"{block.where(ROOT)}:\n" + "\n".join(syntax_problems(block))


@pytest.fixture(scope="module")
def recipe_server(tiny_repository):
    from clients.server_process import ServerProcess

    key = secrets.token_urlsafe(24)
    with ServerProcess(tiny_repository, launcher_args=["--admin-key", key]) as server:
        yield Server(server.host, server.http_port, server.grpc_port, server.metrics_port, key)


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.where(ROOT) for b in RUNNABLE])
def test_recipe_runs_as_written(block: Block, recipe_server: Server):
    if block.skip is not None:
        assert block.skip.kind in SKIP_KINDS
        pytest.skip(f"{block.where(ROOT)} not run here: {block.skip}")
    env = reader_env(Path(sys.prefix), recipe_server)
    before = _untracked()
    failure = None
    try:
        run_block(block, cwd=ROOT, env=env, server=recipe_server, timeout_s=BLOCK_TIMEOUT_S)
    except AssertionError as exc:
        failure = str(exc)
    if failure is not None:
        pytest.fail(f"{block.where(ROOT)} ({block.language}) does not work as written:\n{failure}", pytrace=False)
    littered = sorted(_untracked() - before)
    assert not littered, f"{block.where(ROOT)} wrote {littered} into the checkout: write under out/ (git-ignored)"


def _untracked() -> set[str]:
    """Files in the checkout that git neither tracks nor ignores."""
    run = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(run.stdout.splitlines())
