"""The documentation runs: every example in README.md and docs/**/*.md is executed.

Rules (the documentation convention of this project):

* The ```python blocks of one page run in order in one shared namespace, like a script,
  in a fresh temporary working folder. Top-level ``await`` is allowed: such a block runs
  on the page's own event loop; other blocks run as plain code (so ``asyncio.run`` and
  the sync twins work in them). One test per page; a failure names the page, the block
  number and the line, with a traceback that points into the Markdown file.
* ``<!-- docs: needs NAME [NAME...] -->`` on the line right before a fence starts that
  server through the session fixture ``docs_service_<NAME>`` (``-`` read as ``_``),
  which returns the environment variables to set (``REDIS_URL``...). They stay set for
  the rest of the page and are restored afterwards. A server gets documented by adding
  that one fixture (see tests/plugins/docs_services.py).
* ``<!-- docs: skip "reason" -->`` leaves a block out; the reason is required.
* In ```console / ```bash / ```sh / ```shell blocks, lines that start with
  ``asynccache `` (after an optional ``$ `` prompt) run as commands and must exit 0;
  every other shell line (``pip install``, ``export``...) is shown, not run.

``test_site_builds_strictly`` builds the site with ``mkdocs build --strict``.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import os
import re
import subprocess
import sys
import traceback
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# LiteLLM fetches its model price map from the network at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PYTHON_LANGUAGES = frozenset({"python", "py", "python3"})
SHELL_LANGUAGES = frozenset({"console", "bash", "sh", "shell"})
#: How long one documented command may run before the page fails.
COMMAND_TIMEOUT = 180.0

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*docs:\s*(?P<body>.*?)\s*-->\s*$")
_MARKER_START = re.compile(r"<!--\s*docs:")
_CODE_SPAN = re.compile(r"(`+).+?\1")


class DocsFormatError(ValueError):
    """A page breaks the documentation convention (bad or misplaced marker)."""


@dataclass(frozen=True)
class Block:
    """One runnable fenced block of a page."""

    page: Path
    number: int  #: 1-based, counting the page's python and shell blocks
    line: int  #: line of the block's first code line in the page
    language: str
    source: str
    needs: tuple[str, ...] = ()
    skip_reason: str | None = None

    @property
    def where(self) -> str:
        return f"{relative(self.page)} block {self.number} ({self.language}, line {self.line})"


def relative(page: Path) -> str:
    try:
        return str(page.relative_to(ROOT))
    except ValueError:
        return str(page)


def documented_pages() -> list[Path]:
    """README.md and every Markdown page under docs/, in a stable order."""
    pages = [ROOT / "README.md"]
    if DOCS.is_dir():
        pages += sorted(DOCS.rglob("*.md"))
    return pages


def _parse_marker(body: str, where: str) -> tuple[tuple[str, ...], str | None]:
    """``needs NAME...`` -> (names, None); ``skip "reason"`` -> ((), reason)."""
    verb, _, rest = body.partition(" ")
    rest = rest.strip()
    if verb == "needs":
        names = tuple(name for name in re.split(r"[\s,]+", rest) if name)
        if not names:
            raise DocsFormatError(f"{where}: 'needs' names no server")
        for name in names:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
                raise DocsFormatError(f"{where}: {name!r} is not a server name")
        return names, None
    if verb == "skip":
        match = re.fullmatch(r'"(?P<reason>[^"]*)"', rest)
        if match is None or not match["reason"].strip():
            raise DocsFormatError(
                f'{where}: a skip needs a reason in quotes: <!-- docs: skip "why" -->')
        return (), match["reason"].strip()
    raise DocsFormatError(
        f"{where}: unknown docs marker {body!r} (use 'needs NAME' or 'skip \"reason\"')")


def parse_page(page: Path, text: str | None = None) -> list[Block]:
    """The page's python and shell blocks, with their markers.

    A marker belongs to the fence on the next non-blank line; a marker anywhere else is
    an error, so a typo cannot silently stop a block from running against its server.
    """
    lines = (page.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    pending: list[tuple[int, str]] = []  # markers waiting for their fence: (line, body)
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = _FENCE.match(line)
        marker = _MARKER.match(line)
        if marker is not None:
            pending.append((index + 1, marker["body"]))
            index += 1
            continue
        if _MARKER_START.search(_CODE_SPAN.sub("", line)):
            raise DocsFormatError(
                f"{relative(page)} line {index + 1}: a docs marker must be alone on its line")
        if fence is None:
            if line.strip() and pending:
                raise DocsFormatError(
                    f"{relative(page)} line {pending[0][0]}: docs marker is not right "
                    "before a fenced block")
            index += 1
            continue
        indent, mark = fence["indent"], fence["fence"]
        language = (fence["info"].split() or [""])[0].strip("{}.").lower()
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            closing = lines[end].strip()
            if closing.startswith(mark[0] * len(mark)) and not closing.strip(mark[0]):
                break
            body.append(lines[end][len(indent):] if lines[end].startswith(indent)
                        else lines[end].lstrip())
            end += 1
        needs: tuple[str, ...] = ()
        skip_reason: str | None = None
        for marker_line, marker_body in pending:
            where = f"{relative(page)} line {marker_line}"
            names, reason = _parse_marker(marker_body, where)
            needs += names
            skip_reason = reason or skip_reason
        if language in PYTHON_LANGUAGES or language in SHELL_LANGUAGES:
            blocks.append(Block(page, len(blocks) + 1, index + 2,
                                "python" if language in PYTHON_LANGUAGES else language,
                                "\n".join(body) + "\n", needs, skip_reason))
        elif pending:
            raise DocsFormatError(
                f"{relative(page)} line {pending[0][0]}: docs marker before a "
                f"{language or 'plain'} block, which never runs")
        pending = []
        index = end + 1
    if pending:
        raise DocsFormatError(
            f"{relative(page)} line {pending[0][0]}: docs marker is not right before a "
            "fenced block")
    return blocks


def shell_commands(block: Block) -> list[tuple[int, str]]:
    """(line, command) for each ``asynccache ...`` command of a shell block.

    In a console transcript (a block with ``$ `` prompts) only prompted lines are
    commands: the rest is output, which may well start with "asynccache".
    """
    commands: list[tuple[int, str]] = []
    lines = block.source.splitlines()
    prompted = any(line.lstrip().startswith("$ ") for line in lines)
    index = 0
    while index < len(lines):
        start = index
        text = lines[index].strip()
        while text.endswith("\\") and index + 1 < len(lines):
            index += 1
            text = text[:-1] + " " + lines[index].strip()
        index += 1
        if text.startswith("$ "):
            text = text[2:].lstrip()
        elif prompted:
            continue
        if text.startswith("asynccache "):
            commands.append((block.line + start, text))
    return commands


# -- running a page ----------------------------------------------------------------------

def _page_traceback(exc: BaseException) -> str:
    """The exception, with the frames of this runner left out."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _command_shim(folder: Path) -> Path:
    """A folder holding an ``asynccache`` command that runs this checkout's CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "asynccache"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m asynccache.cli "$@"\n')
    shim.chmod(0o755)
    return folder


def _reset_global_caches() -> None:
    """Undo process-wide caches a page may install (default cache, LiteLLM, LangChain)."""
    import asynccache

    asynccache.disable_cache()
    litellm = sys.modules.get("litellm")
    if litellm is not None:
        litellm.cache = None
    globals_module = sys.modules.get("langchain_core.globals")
    if globals_module is not None:
        globals_module.set_llm_cache(None)


class PageRun:
    """Runs the blocks of one page in one namespace, on one event loop."""

    def __init__(self, page: Path, request: pytest.FixtureRequest,
                 monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
        self.page = page
        self.request = request
        self.monkeypatch = monkeypatch
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        name = "docs_" + re.sub(r"\W", "_", relative(page))
        self.module = types.ModuleType(name)
        self.module.__file__ = str(page)
        self.started: set[str] = set()
        self.bin = _command_shim(workdir / ".docs-bin")

    def start(self, names: tuple[str, ...], where: str) -> None:
        for name in names:
            if name in self.started:
                continue
            fixture = "docs_service_" + name.replace("-", "_")
            try:
                env = self.request.getfixturevalue(fixture)
            except pytest.FixtureLookupError:
                pytest.fail(f"{where} needs {name!r}, but no fixture {fixture!r} provides it; "
                            "add one in tests/plugins/ returning the environment variables",
                            pytrace=False)
            for key, value in env.items():
                self.monkeypatch.setenv(key, str(value))
            self.started.add(name)

    def run_python(self, block: Block) -> None:
        # Padding keeps line numbers equal to the page's, so tracebacks point into it.
        source = "\n" * (block.line - 1) + block.source
        try:
            code = compile(source, str(block.page), "exec",
                           flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        except SyntaxError as exc:
            pytest.fail(f"{block.where} is not valid Python: {exc}", pytrace=False)
        try:
            result = eval(code, self.module.__dict__)
            if code.co_flags & inspect.CO_COROUTINE:
                self.loop.run_until_complete(result)
        except Exception as exc:
            pytest.fail(f"{block.where} failed:\n{_page_traceback(exc)}", pytrace=False)

    def run_shell(self, block: Block) -> None:
        env = {**os.environ,
               "PATH": os.pathsep.join([str(self.bin), str(Path(sys.executable).parent),
                                        os.environ.get("PATH", "")]),
               "PYTHONPATH": os.pathsep.join(
                   filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        for line, command in shell_commands(block):
            try:
                done = subprocess.run(["/bin/sh", "-c", command], cwd=self.workdir, env=env,
                                      capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                                      stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{block.where}: `{command}` (line {line}) did not finish in "
                            f"{COMMAND_TIMEOUT:.0f} s", pytrace=False)
            if done.returncode != 0:
                pytest.fail(f"{block.where}: `{command}` (line {line}) exited with "
                            f"{done.returncode}\n--- stdout ---\n{done.stdout[-4000:]}"
                            f"\n--- stderr ---\n{done.stderr[-4000:]}", pytrace=False)

    def close(self) -> None:
        """Close the caches the page left open, then the page's loop."""
        from asynccache import BaseCache

        for value in list(self.module.__dict__.values()):
            if isinstance(value, BaseCache):
                with contextlib.suppress(Exception):
                    self.loop.run_until_complete(
                        asyncio.wait_for(value.aclose(), timeout=10))
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()
        _reset_global_caches()


@contextlib.contextmanager
def page_run(page: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
             workdir: Path) -> Iterator[PageRun]:
    run = PageRun(page, request, monkeypatch, workdir)
    monkeypatch.chdir(workdir)
    sys.modules[run.module.__name__] = run.module
    try:
        yield run
    finally:
        try:
            run.close()
        finally:
            sys.modules.pop(run.module.__name__, None)


@pytest.mark.parametrize("page", documented_pages(), ids=relative)
def test_page_runs(page: Path, request: pytest.FixtureRequest,
                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every python block and documented command of the page runs without error."""
    try:
        blocks = parse_page(page)
    except DocsFormatError as exc:
        pytest.fail(str(exc), pytrace=False)
    with page_run(page, request, monkeypatch, tmp_path) as run:
        for block in blocks:
            if block.skip_reason is not None:
                continue
            run.start(block.needs, block.where)
            if block.language == "python":
                run.run_python(block)
            else:
                run.run_shell(block)


def test_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict``: no broken link, no page outside the nav, no bad docstring."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_readme_links_resolve() -> None:
    """Relative links of README.md point at files that exist (GitHub renders them)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (ROOT / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, f"README.md links to missing files: {missing}"


# -- the runner's own rules ---------------------------------------------------------------

def _parse(text: str) -> list[Block]:
    return parse_page(ROOT / "example.md", text)


def test_blocks_keep_their_lines_markers_and_order() -> None:
    blocks = _parse(
        "# Title\n\n```python\nx = 1\n```\n\ntext\n\n<!-- docs: needs redis s3 -->\n"
        "```py\nawait f()\n```\n\n```json\n{}\n```\n\n<!-- docs: skip \"needs a key\" -->\n"
        "```bash\npip install x\n$ asynccache ping \\\n  --type redis\n```\n")
    assert [(b.number, b.line, b.language) for b in blocks] == [
        (1, 4, "python"), (2, 11, "python"), (3, 20, "bash")]
    assert blocks[0].source == "x = 1\n"
    assert blocks[1].needs == ("redis", "s3")
    assert blocks[2].skip_reason == "needs a key"
    assert shell_commands(blocks[2]) == [(21, "asynccache ping  --type redis")]


def test_console_output_lines_are_not_commands() -> None:
    (block,) = _parse("```console\n$ asynccache demo\nasynccache demo: simulated...\n```\n")
    assert shell_commands(block) == [(2, "asynccache demo")]


def test_markers_quoted_in_code_spans_are_text() -> None:
    assert _parse("Write `<!-- docs: needs redis -->` before the fence.\n") == []


def test_indented_fences_are_dedented() -> None:
    (block,) = _parse("1. step\n\n    ```python\n    if True:\n        y = 2\n    ```\n")
    assert block.source == "if True:\n    y = 2\n"


@pytest.mark.parametrize(("text", "complaint"), [
    ('<!-- docs: skip -->\n```python\n```\n', "needs a reason"),
    ('<!-- docs: skip "" -->\n```python\n```\n', "needs a reason"),
    ("<!-- docs: need redis -->\n```python\n```\n", "unknown docs marker"),
    ("<!-- docs: needs -->\n```python\n```\n", "names no server"),
    ("<!-- docs: needs Redis! -->\n```python\n```\n", "not a server name"),
    ("<!-- docs: needs redis -->\ntext\n```python\n```\n", "not right before"),
    ("text\n<!-- docs: needs redis -->\n", "not right before"),
    ("<!-- docs: needs redis -->\n```json\n{}\n```\n", "never runs"),
    ("see <!-- docs: needs redis --> here\n", "alone on its line"),
])
def test_bad_markers_are_errors(text: str, complaint: str) -> None:
    with pytest.raises(DocsFormatError, match=complaint):
        _parse(text)


def test_a_missing_service_fixture_fails_the_page(request: pytest.FixtureRequest,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    with page_run(ROOT / "example.md", request, monkeypatch, tmp_path) as run, \
            pytest.raises(pytest.fail.Exception, match="docs_service_no_such_server"):
        run.start(("no-such-server",), "example.md block 1")


def test_blocks_share_a_namespace_await_and_report_the_page_line(
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nimport asyncio\nx = await asyncio.sleep(0, 41)\n```\n\n"
                    "```python\nasyncio.run(asyncio.sleep(0))\n"
                    "assert x + 1 == 42\nassert x == 0, 'x is 41'\n```\n")
    first, second = parse_page(page)
    with page_run(page, request, monkeypatch, tmp_path) as run:
        run.run_python(first)
        with pytest.raises(pytest.fail.Exception) as failure:
            run.run_python(second)
    message = str(failure.value)
    assert "block 2 (python, line 7) failed" in message
    assert f'File "{page}", line 9' in message and "x is 41" in message


def test_commands_run_and_must_succeed(request: pytest.FixtureRequest,
                                       monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    (good, bad) = _parse("```console\n$ asynccache --help\nusage: ...\n```\n\n"
                         "```bash\nasynccache no-such-command\n```\n")
    with page_run(ROOT / "example.md", request, monkeypatch, tmp_path) as run:
        run.run_shell(good)
        with pytest.raises(pytest.fail.Exception, match="exited with 2"):
            run.run_shell(bad)


@pytest.fixture(scope="session")
def docs_service_docs_probe() -> dict[str, str]:
    """A stand-in server for the runner's own tests: only its environment variable."""
    return {"DOCS_PROBE_URL": "probe://127.0.0.1:1"}


def test_needs_sets_the_service_environment_for_the_page_only(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- docs: needs docs-probe -->\n```python\nimport os\n"
                    "url = os.environ['DOCS_PROBE_URL']\n```\n")
    (block,) = parse_page(page)
    assert "DOCS_PROBE_URL" not in os.environ
    with pytest.MonkeyPatch.context() as monkeypatch, \
            page_run(page, request, monkeypatch, tmp_path) as run:
        run.start(block.needs, block.where)
        run.run_python(block)
        assert run.module.url == "probe://127.0.0.1:1"
    assert "DOCS_PROBE_URL" not in os.environ
