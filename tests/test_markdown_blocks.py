"""How the recipe test reads Markdown and judges a block, specified on small documents."""

from __future__ import annotations

import pytest

from tests.markdown_blocks import MarkdownError, Skip, blocks_of, linked_documents, parse_marker
from tests.recipe_runner import Server, missing_output, rewrite_addresses, syntax_problems


def _doc(tmp_path, text, name="README.md"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_blocks_come_in_order_with_their_language_line_and_text(tmp_path):
    doc = _doc(tmp_path, "# T\n\n```bash\nmake demo\n```\n\ntext\n\n```python\nprint(1)\n```\n")
    blocks = blocks_of(doc)
    assert [(b.line, b.language, b.text, b.skip) for b in blocks] == [(3, "bash", "make demo\n", None), (9, "python", "print(1)\n", None)]
    assert [b.runnable for b in blocks] == [True, True]


def test_a_marker_on_the_line_before_the_fence_skips_the_block_with_its_reason(tmp_path):
    doc = _doc(tmp_path, "<!-- recipe: skip gpu: builds TensorRT engines -->\n\n```bash\npython -m export.tensorrt\n```\n")
    (block,) = blocks_of(doc)
    assert block.skip == Skip("gpu", "builds TensorRT engines")


def test_a_marker_further_up_does_not_skip_the_block(tmp_path):
    doc = _doc(tmp_path, "<!-- recipe: skip gpu: x -->\nSome prose.\n```bash\ntrue\n```\n")
    assert blocks_of(doc)[0].skip is None


@pytest.mark.parametrize(
    "line",
    ["<!-- recipe: skip gpuu: typo -->", "<!-- recipe: skip gpu -->", "<!-- recipe: run later -->"],
)
def test_a_malformed_marker_is_an_error_not_a_silent_run_or_skip(line):
    with pytest.raises(MarkdownError, match="marker"):
        parse_marker(line)


def test_other_comments_are_not_markers():
    assert parse_marker("<!-- a note -->") is None


def test_a_fence_without_a_language_is_an_error(tmp_path):
    doc = _doc(tmp_path, "```\n$ curl -s localhost:8002/metrics\n```\n")
    with pytest.raises(MarkdownError, match="without a language"):
        blocks_of(doc)


def test_a_block_inside_a_list_loses_the_list_indentation(tmp_path):
    doc = _doc(tmp_path, "- item:\n\n  ```bash\n  echo a \\\n    b\n  ```\n")
    assert blocks_of(doc)[0].text == "echo a \\\n  b\n"


def test_text_dockerfile_and_promql_blocks_are_not_commands(tmp_path):
    doc = _doc(tmp_path, "```text\nx\n```\n```dockerfile\nFROM x\n```\n```promql\nrate(x[5m])\n```\n")
    assert [b.runnable for b in blocks_of(doc)] == [False, False, False]


def test_linked_markdown_is_found_recursively_once_and_outside_links_are_not(tmp_path):
    readme = _doc(tmp_path, "[a](docs/A.md) [b](docs/A.md#part) [web](https://x.org/C.md) [gone](NOPE.md)")
    a = _doc(tmp_path, "[back](../README.md) [b](B.md)", "docs/A.md")
    b = _doc(tmp_path, "no links", "docs/B.md")
    assert linked_documents(readme, tmp_path) == [readme.resolve(), a.resolve(), b.resolve()]


SERVER = Server("127.0.0.1", 41000, 41001, 41002, "k" * 16)


def test_the_documented_addresses_point_at_the_test_server():
    text = "curl localhost:8000/v2 -u 127.0.0.1:8001 http://127.0.0.1:8002/metrics localhost:80001 example.org:8000"
    assert rewrite_addresses(text, SERVER) == (
        "curl localhost:41000/v2 -u 127.0.0.1:41001 http://127.0.0.1:41002/metrics localhost:80001 example.org:8000"
    )


def _block(tmp_path, language, text):
    return blocks_of(_doc(tmp_path, f"```{language}\n{text}```\n"))[0]


def test_a_backslash_followed_by_a_comment_is_reported_before_the_block_runs(tmp_path):
    block = _block(tmp_path, "bash", "python -m export.tensorrt \\\n  --backend tensorrt \\   # python-trt\n  --accept-rate 0.6\n")
    (problem,) = syntax_problems(block)
    assert "line 2" in problem and "backslash" in problem


def test_shell_and_python_syntax_errors_are_reported_before_the_block_runs(tmp_path):
    assert syntax_problems(_block(tmp_path, "bash", "if true; then\n")) != []
    assert syntax_problems(_block(tmp_path, "python", "print(\n")) != []
    assert syntax_problems(_block(tmp_path, "bash", "echo ok \\\n  more\n")) == []


def test_shown_console_output_must_be_printed_numbers_aside():
    shown = ["adaptive_accept_rate 0.25", 'adaptive_stage_seconds_bucket{stage="text",le="0.25"} 4', "# TYPE adaptive_rows_total counter"]
    printed = 'adaptive_accept_rate 0.9779\nadaptive_stage_seconds_bucket{stage="text",le="0.5"} 12\n# TYPE adaptive_rows_total counter\n'
    assert missing_output(shown, printed) == []
    assert missing_output(shown, printed.replace("rows_total counter", "rows counter")) == ["# TYPE adaptive_rows_total counter"]
