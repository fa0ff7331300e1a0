"""Every `clfapp ...` command line shown in README.md and docs/*.md parses against the CLI.

Nothing is run: the Typer app is walked as the click command tree it builds, and each line
shown in a fenced code block (and each inline code span that starts with `clfapp `) is checked
for a command (and subcommand) that exists and flags that are options of that command. A
documented command or flag that the code renames or drops fails here, naming the file and line.

Parsing: a trailing `# comment` is dropped, `\\` continuations are joined, `|`, `||`, `&&` and
`;` between words split a line into commands, and each command whose program is `clfapp` (any
path ending in it, e.g. `.venv/bin/clfapp`, after `VAR=value` prefixes) is checked; `python`,
`accelerate` and `torchrun` commands are skipped (they run clfapp as a module, with their own
flags). Usage notation is understood: `[--flag VALUE]` brackets, `ARG...` and `...`
placeholders, and `a|b` alternatives inside one word (`data check|prepare` names two
subcommands).
"""
from __future__ import annotations

import difflib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIPPED_PROGRAMS = {"python", "python3", "accelerate", "torchrun"}
SEPARATORS = {"|", "||", "&&", ";"}
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)*?)`(?!`)")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass
class Shown:
    """A command line as the docs show it: where, and its text."""
    file: str
    line: int
    text: str


def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, text in lines:
        if pending is not None:
            number, text = pending[0], pending[1] + " " + text.lstrip()
            pending = None
        if text.rstrip().endswith("\\"):
            pending = (number, text.rstrip()[:-1])
        else:
            out.append((number, text))
    if pending is not None:
        out.append(pending)
    return out


def shown_commands(text: str, file: str = "<text>") -> list[Shown]:
    """The lines of `text` (Markdown) that may hold a clfapp command: every line of a fenced
    code block that mentions clfapp (continuations joined), and every inline code span outside
    the blocks that starts with `clfapp `."""
    found: list[Shown] = []
    block: list[tuple[int, str]] | None = None
    prose: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                found += [Shown(file, n, t) for n, t in _join_continuations(block)
                          if re.search(r"\bclfapp\b", t)]
                block = None
            prose.append("")
            continue
        if block is not None:
            block.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    joined = "\n".join(prose)
    for m in INLINE.finditer(joined):
        span = " ".join(m.group(1).split())
        if span.startswith("clfapp "):
            found.append(Shown(file, joined.count("\n", 0, m.start()) + 1, span))
    return sorted(found, key=lambda s: s.line)


def _tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def _segments(tokens: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for tok in tokens:
        if tok in SEPARATORS:
            out.append([])
        else:
            out[-1].append(tok)
    return [seg for seg in out if seg]


def _program(segment: list[str]) -> tuple[str, list[str]]:
    """(program name, its arguments), after `VAR=value` prefixes."""
    i = 0
    while i < len(segment) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", segment[i]):
        i += 1
    if i == len(segment):
        return "", []
    return Path(segment[i]).name, segment[i + 1:]


def _clean(tok: str) -> str:
    """A word without usage notation: brackets around optional parts and `...` ellipses."""
    tok = tok.strip("[]")
    for dots in ("...", "…"):
        if tok.endswith(dots):
            tok = tok[: -len(dots)]
    return tok.strip("[]")


def _options(command, ctx_class) -> list[str]:
    ctx = ctx_class(command)
    names: list[str] = []
    for param in command.get_params(ctx):
        if getattr(param, "param_type_name", "") == "option":
            names += list(param.opts) + list(param.secondary_opts)
    return names


def _is_flag_word(tok: str) -> bool:
    return tok.startswith("-") and tok not in ("-", "--") and not re.fullmatch(r"-[\d.]+(e-?\d+)?", tok)


def check_args(root, args: list[str]) -> list[str]:
    """What is wrong with `clfapp ARGS` against the click command tree `root` ([] when it
    parses): unknown commands and subcommands, unknown flags, with close matches named."""
    problems: list[str] = []
    ctx_class = root.context_class
    args = [c for c in (_clean(t) for t in args) if c]
    # Walk down the groups: each may take its own flags before the subcommand's name.
    paths = [(root, ["clfapp"], 0)]
    leaves = []
    while paths:
        command, path, i = paths.pop()
        if not hasattr(command, "commands"):
            leaves.append((command, path, i))
            continue
        while i < len(args) and _is_flag_word(args[i]):
            problems += _flag_problems(command, path, args[i], ctx_class)
            i += 1
        if i == len(args):
            continue  # a group alone: prints its help
        for name in args[i].split("|"):
            sub = command.commands.get(name)
            if sub is None:
                close = difflib.get_close_matches(name, list(command.commands), n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else \
                    f"; it has: {', '.join(command.commands)}"
                problems.append(f"unknown command {' '.join(path)} {name!r}{hint}")
            else:
                paths.append((sub, path + [name], i + 1))
    for command, path, i in leaves:
        for tok in args[i:]:
            if _is_flag_word(tok):
                problems += _flag_problems(command, path, tok, ctx_class)
    return problems


def _flag_problems(command, path: list[str], tok: str, ctx_class) -> list[str]:
    known = _options(command, ctx_class)
    flag = tok.split("=", 1)[0]
    if flag in known:
        return []
    close = difflib.get_close_matches(flag, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; its options: {', '.join(known)}"
    return [f"unknown flag {flag} for `{' '.join(path)}`{hint}"]


def check_shown(root, shown: Shown) -> list[str]:
    """Problems of one shown line, each naming the file, line number and the line."""
    where = f"{shown.file}:{shown.line}: {shown.text.strip()}"
    try:
        tokens = _tokens(shown.text)
    except ValueError as exc:  # unbalanced quotes: in a clfapp line that is a mistake too
        if re.match(r"\s*(\S*/)?clfapp\b", shown.text):
            return [f"{where}\n    cannot be split into words: {exc}"]
        return []
    problems = []
    for segment in _segments(tokens):
        program, args = _program(segment)
        if program in SKIPPED_PROGRAMS or program != "clfapp":
            continue
        problems += [f"{where}\n    {p}" for p in check_args(root, args)]
    return problems


def _clfapp_args(shown: Shown) -> list[list[str]]:
    try:
        tokens = _tokens(shown.text)
    except ValueError:
        return []
    return [args for program, args in map(_program, _segments(tokens)) if program == "clfapp"]


@pytest.fixture(scope="module")
def cli():
    import typer.main

    from clfapp.cli.main import app
    return typer.main.get_command(app)


@pytest.fixture(scope="module")
def documented() -> list[Shown]:
    shown = []
    for path in doc_files():
        shown += shown_commands(path.read_text(), str(path.relative_to(REPO)))
    return shown


def test_every_documented_command_line_parses(cli, documented):
    checked = [s for s in documented if _clfapp_args(s)]
    assert len(checked) >= 60, f"only {len(checked)} clfapp command lines found in the docs"
    problems = [p for s in documented for p in check_shown(cli, s)]
    assert not problems, (f"{len(problems)} documented clfapp command line(s) do not parse:\n"
                          + "\n".join(problems))


def test_readme_shows_every_command(cli, documented):
    """The README's commands table names every command and subcommand the app has."""
    readme = {" ".join(_clean(t) for t in args[:2]) for s in documented
              if s.file == "README.md" for args in _clfapp_args(s)}
    expected = []
    for name, command in cli.commands.items():
        if hasattr(command, "commands"):
            expected += [f"{name} {sub}" for sub in command.commands]
        else:
            expected.append(name)
    missing = [name for name in expected
               if not any(shown == name or shown.startswith(name + " ") for shown in readme)]
    assert not missing, f"README.md shows no `clfapp {'`, `clfapp '.join(missing)}` line"


def test_checker_rejects_unknown_flag(cli):
    shown = shown_commands("Run `clfapp fit digits --epochz 3` now.\n", "x.md")
    assert [s.text for s in shown] == ["clfapp fit digits --epochz 3"]
    problems = check_shown(cli, shown[0])
    assert len(problems) == 1, problems
    assert problems[0].startswith("x.md:1: clfapp fit digits --epochz 3")
    assert "unknown flag --epochz for `clfapp fit`" in problems[0]
    assert "did you mean --epochs" in problems[0]


def test_checker_rejects_unknown_command_and_subcommand(cli):
    text = ("# title\n\n```bash\n"
            "clfapp trian digits          # a typo\n"
            "clfapp data chek photos/\n"
            "clfapp data check|prepare|scrub plants\n"
            "```\n")
    problems = [p for s in shown_commands(text, "y.md") for p in check_shown(cli, s)]
    assert len(problems) == 3, problems
    assert problems[0].startswith("y.md:4: clfapp trian digits")
    assert "unknown command clfapp 'trian'" in problems[0]
    assert problems[1].startswith("y.md:5:") and "unknown command clfapp data 'chek'; did you mean check" in problems[1]
    assert problems[2].startswith("y.md:6:") and "unknown command clfapp data 'scrub'" in problems[2]


def test_checker_flags_of_the_right_command(cli):
    # --tta is predict's, not fit's; --json is data check's, not data prepare's.
    text = "```\nclfapp fit digits --tta\nclfapp data prepare plants --json\nclfapp predict r p --tta\n```\n"
    problems = [p for s in shown_commands(text) for p in check_shown(cli, s)]
    assert len(problems) == 2, problems
    assert "unknown flag --tta for `clfapp fit`" in problems[0]
    assert "unknown flag --json for `clfapp data prepare`" in problems[1]


def test_checker_reads_shell_and_usage_notation(cli):
    text = "\n".join([
        "```bash",
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/clfapp fit digits --epochs 2",
        "HF_HUB_OFFLINE=1 .venv/bin/clfapp fit plants \\",
        "    --budget=15m --set aug.max_rotate=30     # a comment --not-a-flag",
        "clfapp runs --sort accuracy | head -3",
        "python -m clfapp fit digits --whatever      # python lines are skipped",
        "accelerate launch --multi_gpu --num_processes 2 -m clfapp fit digits",
        "torchrun --nproc_per_node 2 -m clfapp fit digits",
        "clfapp predict runs/plants-1 photos/ --no-tta",
        "```",
        "`clfapp ensemble RUN RUN... [--vote soft|hard] [--weights 2,1]` and `clfapp data",
        "check|prepare PLANTS` and `clfapp fit ...` and `clfapp --help` and `clfapp data`",
        "",
        "```bash",
        "clfapp fit plants --bugdet 15m && clfapp evaluate runs/plants-1 --tta",
        "```",
    ])
    shown = shown_commands(text, "z.md")
    assert [s.line for s in shown] == [2, 3, 5, 6, 7, 8, 9, 11, 11, 12, 12, 12, 15]
    assert shown[1].text.endswith("--budget=15m --set aug.max_rotate=30     # a comment --not-a-flag")
    assert shown[8].text == "clfapp data check|prepare PLANTS"
    problems = [p for s in shown for p in check_shown(cli, s)]
    # Only the misspelt --budget on the last line: the rest parses or is skipped.
    assert len(problems) == 1, problems
    assert problems[0].startswith("z.md:15: clfapp fit plants --bugdet 15m")
    assert "unknown flag --bugdet for `clfapp fit`; did you mean --budget" in problems[0]


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link that is no URL and no in-page anchor."""
    return [(number, target) for number, line in enumerate(text.splitlines(), 1)
            for target in LINK.findall(line)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")]


def broken_links(path: Path) -> list[str]:
    return [f"{path.name}:{number}: {target}" for number, target in relative_links(path.read_text())
            if not (path.parent / target.split("#", 1)[0]).exists()]


def test_relative_links_in_docs_resolve():
    links = sum(len(relative_links(p.read_text())) for p in doc_files())
    assert links >= 30, f"only {links} relative links found in README.md and docs/"
    broken = [f"{p.parent.name}/{b}" for p in doc_files() for b in broken_links(p)]
    assert not broken, "relative links to missing files:\n" + "\n".join(broken)


def test_link_checker_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# there\n")
    page.write_text("[ok](there.md#top), [web](https://example.org/x.md), [in page](#a)\n"
                    "and [gone](docs/missing.md).\n")
    assert broken_links(page) == ["page.md:2: docs/missing.md"]


def test_docs_index_lists_every_page():
    index = REPO / "docs" / "index.md"
    linked = {target.split("#", 1)[0] for _, target in relative_links(index.read_text())}
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"index.md"}
    assert pages <= linked, f"docs/index.md does not link to: {', '.join(sorted(pages - linked))}"
    readme = {t for _, t in relative_links((REPO / "README.md").read_text())}
    assert "docs/index.md" in readme, "README.md does not link to docs/index.md"
