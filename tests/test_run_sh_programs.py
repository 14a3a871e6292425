"""Every run.sh task installs or checks for each external program it runs, before it runs it.

A task that reaches a program this machine may lack must say so up front: either through
`need_programs TASK PROGRAM=PACKAGE...` (installs the Debian package as root with apt, else stops
on one line naming what is missing) or a `command -v PROGRAM` check in run.sh itself. Checks inside
the scripts and tests a task starts do not count: they come late (pi-standin.sh checks for podman
only after the minutes-long board build).

The programs a task reaches are read from the sources, not declared here: run.sh is parsed into
simple commands; from the task's branch of main()'s dispatch the walk follows run.sh's functions,
the repository scripts it starts (`bash "$ROOT/workers/pi-standin.sh" all`, entering only the
branch of a `case` that matches the argument given), and the test files it hands to pytest by name,
whose subprocess argv lists and `shutil.which` calls are read with `ast` (the programs they run on
the host; what they run inside the arm64 board comes from the board's own root). A pytest run
without named files is the default suite, whose tests skip, saying why, when a program is missing.

What needs no check: bash builtins; the project's own programs (the venv that `setup` makes,
`edgecc`); and BASE, the programs of Debian 12's Priority: required packages, on every Debian 12
system (checked against dpkg where there is one). A command word the walk cannot resolve is itself
a failure, unless DYNAMIC says what it runs.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import stat
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NEED = "need_programs"

# Programs of Debian 12 packages with Priority: required (Essential ones among them), present on every
# Debian 12 system, minbase included.
BASE_PACKAGES = {
    "bash": ["bash"],
    "dash": ["sh"],
    "coreutils": ["basename", "cat", "chmod", "chown", "chroot", "cp", "cut", "date", "dirname", "du", "env", "head",
                  "id", "install", "ln", "ls", "mkdir", "mktemp", "mv", "nice", "nohup", "od", "readlink", "rm",
                  "seq", "sleep", "sort", "stat", "tail", "tee", "timeout", "touch", "tr", "uniq", "wc"],
    "util-linux": ["nsenter", "unshare", "setpriv"],
    "mount": ["mount", "umount"],
    "grep": ["grep"],
    "sed": ["sed"],
    "findutils": ["find", "xargs"],
    "tar": ["tar"],
    "gzip": ["gzip"],
    "apt": ["apt-get"],
    "dpkg": ["dpkg", "dpkg-query"],
}
BASE = {p for progs in BASE_PACKAGES.values() for p in progs}

BUILTINS = set("""
    . : [ [[ (( alias bg break builtin caller cd command compgen complete continue declare dirs disown echo enable
    eval exec exit export false fc fg getopts hash help history jobs kill let local logout mapfile popd printf pushd
    pwd read readarray readonly return set shift shopt source suspend test times trap true type typeset ulimit umask
    unalias unset wait
""".split())
KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}", "time", "esac", "in"}
# Commands that run the command in their arguments: name -> options that take a value.
WRAPPERS = {"nice": {"-n", "--adjustment"}, "nohup": set(), "exec": {"-a"}, "env": {"-u", "-C", "--chdir"},
            "timeout": {"-s", "-k", "--signal", "--kill-after"}, "sudo": {"-u", "-g"}}

PROJECT = "project"  # the repository's own programs: the .venv that `run.sh setup` makes, edgecc in it
PROJECT_SCRIPTS = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
# Command words whose program no rule here resolves: (script, function, word as written) -> what it runs.
DYNAMIC = {
    # the repo's .venv (setup makes it, with pip) or the user's own $PYTHON; python3 only when neither
    # exists, and there the wheel build's own error names what is missing
    ("run.sh", "*", "$(python_bin)"): PROJECT,
    ("run.sh", "*", "$(edgecc_bin)"): PROJECT,
    # the interpreter of a `PYTHON -m MODULE` entry, which that same entry declares
    ("run.sh", "have_program", "${1%% *}"): None,
}


# --- a reader for the bash these scripts are written in ----------------------------------------

@dataclass
class Word:
    raw: str
    value: str | None  # the word without quotes when it has no expansion, else None
    subs: list = field(default_factory=list)  # command substitutions in it: lists of nodes
    line: int = 0


@dataclass
class Cmd:
    words: list[Word]
    assigns: list[Word]  # NAME=VALUE words before the command
    line: int


@dataclass
class For:
    var: str
    words: list[Word]


@dataclass
class Case:
    branches: list[tuple[list[str], list]]  # (patterns, nodes)


class Lexer:
    """Words, operators and newlines, with heredoc bodies and comments dropped."""

    OPS = (";;&", ";;", ";&", "&&", "||", "|&", ";", "&", "|", "(", ")")
    REDIR = re.compile(r"\d*(&>>|&>|<<<|<<-|<<|>>|>&|<&|>\||<>|>|<)")

    def __init__(self, text: str, line0: int = 1):
        self.s, self.i, self.line = text, 0, line0
        self.heredocs: list[tuple[str, bool]] = []
        self.tokens: list = []

    def run(self) -> list:
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c in " \t":
                self.i += 1
            elif s.startswith("\\\n", self.i):
                self.i += 2
                self.line += 1
            elif c == "\n":
                self.i += 1
                self.tokens.append(("op", "\n", self.line))
                self.line += 1
                self.skip_heredocs()
            elif c == "#":
                while self.i < len(s) and s[self.i] != "\n":
                    self.i += 1
            elif s.startswith("((", self.i):
                j = self.balanced(self.i, "(", ")")
                self.tokens.append(("word", Word(s[self.i:j], None, [], self.line), self.line))
                self.i = j
            elif (m := self.REDIR.match(s, self.i)) and not s.startswith(("<(", ">("), self.i):
                op = m.group(1)
                self.i = m.end()
                if op in ("<<", "<<-"):
                    while s[self.i] in " \t":
                        self.i += 1
                    w = self.word()
                    self.heredocs.append((w.raw.strip("'\""), op == "<<-"))
                else:
                    self.tokens.append(("redir", op, self.line))
            elif any(s.startswith(op, self.i) for op in self.OPS):
                op = next(op for op in self.OPS if s.startswith(op, self.i))
                self.i += len(op)
                self.tokens.append(("op", op, self.line))
            else:
                line = self.line
                self.tokens.append(("word", self.word(), line))
        return self.tokens

    def skip_heredocs(self) -> None:
        for delim, tabs in self.heredocs:
            while self.i < len(self.s):
                end = self.s.find("\n", self.i)
                end = len(self.s) if end < 0 else end
                text = self.s[self.i:end]
                self.i, self.line = end + 1, self.line + 1
                if (text.lstrip("\t") if tabs else text) == delim:
                    break
        self.heredocs = []

    def balanced(self, i: int, open_: str, close: str) -> int:
        """Index after the `close` that matches s[i] == open_, skipping quoted text."""
        s, depth = self.s, 0
        while i < len(s):
            c = s[i]
            if c == "\\":
                i += 2
                continue
            if c == "'" and open_ != "{":
                i = s.index("'", i + 1) + 1
                continue
            if c == '"':
                i = self.dquote_end(i)
                continue
            if c == "\n":
                self.line += 1
            if c == open_:
                depth += 1
            elif c == close:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        raise ValueError(f"unbalanced {open_!r} at line {self.line}")

    def dquote_end(self, i: int) -> int:
        s = self.s
        i += 1
        while s[i] != '"':
            if s[i] == "\\":
                i += 2
            elif s.startswith("$(", i) or s.startswith("${", i):
                i = self.balanced(i + 1, s[i + 1], ")" if s[i + 1] == "(" else "}")
            else:
                i += 1
        return i + 1

    def substitution(self, i: int, word: Word) -> int:
        """s[i:] starts with `$(`: a command substitution (parsed into word.subs) or `$((` arithmetic."""
        start_line = self.line
        j = self.balanced(i + 1, "(", ")")
        if not self.s.startswith("$((", i):
            word.subs.append(parse(self.s[i + 2:j - 1], start_line))
        return j

    def word(self) -> Word:
        s, start = self.s, self.i
        w = Word("", "", [], self.line)
        value, plain = [], True
        while self.i < len(s):
            c = s[self.i]
            if c in " \t\n;&|()<>":
                if c == "(" and re.fullmatch(r"[A-Za-z_]\w*(\[[^]]*\])?\+?=", s[start:self.i]):
                    self.i = self.balanced(self.i, "(", ")")  # an array assignment
                    plain = False
                    continue
                if c in "<>" and s.startswith("(", self.i + 1):  # process substitution
                    self.i = self.substitution(self.i, w)
                    plain = False
                    continue
                break
            if c == "\\":
                value.append(s[self.i + 1:self.i + 2])
                self.i += 2
            elif c == "'":
                j = s.index("'", self.i + 1)
                value.append(s[self.i + 1:j])
                self.i = j + 1
            elif c == '"':
                self.i += 1
                while s[self.i] != '"':
                    if s[self.i] == "\\":
                        value.append(s[self.i + 1])
                        self.i += 2
                    elif s.startswith("$(", self.i):
                        self.i, plain = self.substitution(self.i, w), False
                    elif s.startswith("${", self.i):
                        self.i, plain = self.balanced(self.i + 1, "{", "}"), False
                    elif s[self.i] == "$" and re.match(r"\$[\w@#?*!$-]", s[self.i:]):
                        plain = False
                        self.i += 1
                    else:
                        value.append(s[self.i])
                        self.i += 1
                self.i += 1
            elif s.startswith("$(", self.i):
                self.i, plain = self.substitution(self.i, w), False
            elif s.startswith("${", self.i):
                self.i, plain = self.balanced(self.i + 1, "{", "}"), False
            elif c == "$" and re.match(r"\$[\w@#?*!$-]", s[self.i:]):
                plain = False
                self.i += 1
            elif c == "`":
                j = s.index("`", self.i + 1)
                w.subs.append(parse(s[self.i + 1:j], self.line))
                self.i, plain = j + 1, False
            else:
                value.append(c)
                self.i += 1
        w.raw = s[start:self.i]
        w.value = "".join(value) if plain else None
        return w


ASSIGN = re.compile(r"([A-Za-z_]\w*)(\[[^]]*\])?\+?=")


def parse(text: str, line0: int = 1) -> list:
    """The nodes of a piece of bash, in execution order: Cmd, For, Case (substitutions before their command)."""
    tokens = Lexer(text, line0).run()
    nodes, stack = [], []  # stack: enclosing (Case, current branch nodes, nodes to restore)
    words: list[Word] = []
    assigns: list[Word] = []
    pattern_mode = False
    patterns: list[str] = []
    i = 0

    def out() -> list:
        return stack[-1][1] if stack else nodes

    def end_command() -> None:
        nonlocal words, assigns
        if words or assigns:
            for w in assigns + words:
                for sub in w.subs:
                    out().extend(sub)
            if words:
                out().append(Cmd(words, assigns, words[0].line))
            else:
                out().append(Cmd([], assigns, assigns[0].line))
        words, assigns = [], []

    while i < len(tokens):
        kind, tok, line = tokens[i]
        i += 1
        if pattern_mode:
            if kind == "word" and tok.raw == "esac":
                stack.pop()
                pattern_mode = False
            elif kind == "op" and tok == ")":
                stack[-1][0].branches.append((patterns, []))
                stack[-1] = (stack[-1][0], stack[-1][0].branches[-1][1], None)
                patterns, pattern_mode = [], False
            elif kind == "word":
                patterns.append(tok.value if tok.value is not None else tok.raw)
            continue
        if kind == "op":
            end_command()
            if tok in (";;", ";&", ";;&") and stack:
                pattern_mode = True
            continue
        if kind == "redir":
            if i < len(tokens) and tokens[i][0] == "word":
                for sub in tokens[i][1].subs:
                    out().extend(sub)
                i += 1
            continue
        w: Word = tok
        if words:
            words.append(w)
            continue
        if w.raw in KEYWORDS:
            if w.raw == "esac" and stack:
                stack.pop()
            continue
        if w.raw == "case":
            subject = tokens[i][1]
            for sub in subject.subs:
                out().extend(sub)
            i += 2  # the subject and `in`
            case = Case([])
            out().append(case)
            stack.append((case, [], None))
            pattern_mode = True
            continue
        if w.raw == "for":
            var = tokens[i][1].raw
            i += 1
            loop = []
            if i < len(tokens) and tokens[i][0] == "word" and tokens[i][1].raw == "in":
                i += 1
                while tokens[i][0] == "word":
                    loop.append(tokens[i][1])
                    for sub in tokens[i][1].subs:
                        out().extend(sub)
                    i += 1
            out().append(For(var, loop))
            continue
        if w.raw == "[[":
            while i < len(tokens) and not (tokens[i][0] == "word" and tokens[i][1].raw == "]]"):
                if tokens[i][0] == "word":
                    for sub in tokens[i][1].subs:
                        out().extend(sub)
                i += 1
            i += 1
            continue
        if ASSIGN.match(w.raw):
            assigns.append(w)
            continue
        words.append(w)
    end_command()
    return nodes


FUNC = re.compile(r"^([A-Za-z_][\w-]*)\(\)\s*\{(.*)$")


def split_functions(text: str) -> tuple[dict[str, tuple[str, int]], str]:
    """{name: (body, first line)} and the top-level text (function lines blanked, so line numbers stay)."""
    funcs, top = {}, []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FUNC.match(lines[i])
        if not m:
            top.append(lines[i])
            i += 1
            continue
        rest = m.group(2).strip()
        if rest.endswith("}"):  # one line: name() { ...; }
            funcs[m.group(1)] = (rest[:-1], i + 1)
            top.append("")
            i += 1
            continue
        j = i + 1
        while lines[j].rstrip() != "}":
            j += 1
        funcs[m.group(1)] = ("\n".join(lines[i + 1:j]), i + 2)
        top.extend([""] * (j - i + 1))
        i = j + 1
    return funcs, "\n".join(top)


# --- what a task reaches ---------------------------------------------------------------------

@dataclass
class Event:
    kind: str  # "use": runs the program; "cover": installs or checks for it; "unresolved"
    program: str
    where: str
    entry: bool  # in run.sh itself, in the task's own process (not a script or test it starts)


class Script:
    def __init__(self, path: Path, root: Path):
        self.path, self.root = path, root
        self.rel = str(path.relative_to(root))
        funcs, top = split_functions(path.read_text())
        self.funcs = {name: parse(body, line) for name, (body, line) in funcs.items()}
        self.top = parse(top)
        # variables set at the top level or in a function: name -> value words (the first `=`, not `+=`)
        self.vars: dict[str | None, dict[str, Word]] = {}
        for scope, nodes in [(None, self.top), *self.funcs.items()]:
            found = self.vars.setdefault(scope, {})
            for n in walk(nodes):
                if isinstance(n, Cmd):
                    assigns = n.assigns + (n.words[1:] if n.words and n.words[0].value in ("local", "export",
                                                                                            "declare", "readonly") else [])
                    for a in assigns:
                        m = ASSIGN.match(a.raw)
                        if m and "+=" not in a.raw[:m.end()] and m.group(1) not in found:
                            found[m.group(1)] = a
        # functions that run their arguments as a command (`run CMD...`: `"$@"` as a command word)
        self.wrappers = {name for name, nodes in self.funcs.items()
                         if any(isinstance(n, Cmd) and n.words and n.words[0].raw == '"$@"' for n in walk(nodes))}


def walk(nodes):
    for n in nodes:
        yield n
        if isinstance(n, Case):
            for _, body in n.branches:
                yield from walk(body)


class Walker:
    """The ordered events of one run.sh task."""

    def __init__(self, root: Path):
        self.root = root
        self.scripts: dict[Path, Script] = {}
        self.events: list[Event] = []
        self.stack: list[tuple] = []

    def script(self, path: Path) -> Script:
        if path not in self.scripts:
            self.scripts[path] = Script(path, self.root)
        return self.scripts[path]

    def run_script(self, path: Path, args: list[str], env: dict, entry: bool) -> None:
        key = ("script", path, tuple(args[:1]))
        if key in self.stack:
            return
        self.stack.append(key)
        sc = self.script(path)
        self.nodes(sc, None, sc.top, args[:1], env, entry, {})
        self.stack.pop()

    def call(self, sc: Script, func: str, selector: list[str], env: dict, entry: bool) -> None:
        key = ("func", sc.path, func, tuple(selector), entry)
        if key in self.stack:
            return
        self.stack.append(key)
        self.nodes(sc, func, sc.funcs[func], selector, env, entry, {})
        self.stack.pop()

    def nodes(self, sc: Script, func, nodes: list, selector: list[str], env: dict, entry: bool, loops: dict) -> None:
        for n in nodes:
            if isinstance(n, For):
                loops[n.var] = n.words
            elif isinstance(n, Case):
                chosen = [b for b in n.branches if selector and selector[0] in b[0]] or n.branches
                for _, body in chosen:
                    self.nodes(sc, func, body, selector, env, entry, loops)
            elif n.words:
                self.command(sc, func, n, selector, env, entry, loops)

    def where(self, sc: Script, line: int) -> str:
        return f"{sc.rel}:{line}"

    def resolve(self, sc: Script, func, w: Word, env: dict, depth: int = 0):
        """What a command word runs: a program name or path, ("func", name), ("script", path), PROJECT,
        None (nothing to check), or ("unresolved", text)."""
        if w.value is not None:
            v = w.value
            if v in sc.funcs:
                return ("func", v)
            return v
        raw = w.raw.strip('"')
        for key in ((sc.rel, func, raw), (sc.rel, "*", raw)):
            if key in DYNAMIC:
                return DYNAMIC[key]
        if depth > 5:
            return ("unresolved", raw)
        m = re.fullmatch(r"\$\{?(\w+)(\[@\])?\}?(/.*)?", raw)
        if m:
            name, tail = m.group(1), m.group(3) or ""
            if name in env and not tail:
                return env[name]
            if name == "0" and not tail:
                return ("script", sc.path)
            if self.is_script_dir(sc, name):
                path = (sc.path.parent / tail.lstrip("/")).resolve()
                if tail.startswith("/.venv/"):
                    return PROJECT
                return ("script", path) if path.is_file() else tail.lstrip("/")
            value = sc.vars.get(func, {}).get(name) or sc.vars.get(None, {}).get(name)
            if value is not None and not tail:
                return self.resolve(sc, func, assigned_word(value), env, depth + 1)
        m = re.fullmatch(r"\$\{(\w+):?-([^}]*)\}", raw)
        if m:
            if m.group(1) in env:
                return env[m.group(1)]
            return self.resolve(sc, func, Lexer(m.group(2)).word(), env, depth + 1)
        return ("unresolved", raw)

    def is_script_dir(self, sc: Script, name: str) -> bool:
        """A variable set to the script's own directory: X=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)."""
        value = sc.vars.get(None, {}).get(name)
        return value is not None and "dirname" in value.raw and "BASH_SOURCE" in value.raw

    def command(self, sc: Script, func, n: Cmd, selector, env, entry, loops) -> None:
        words, where = list(n.words), self.where(sc, n.line)
        local_env = dict(env)
        for a in n.assigns:
            m = ASSIGN.match(a.raw)
            local_env[m.group(1)] = self.resolve(sc, func, assigned_word(a), env)
        while words:
            first = words[0]
            name = first.value
            if name in WRAPPERS:
                words = skip_options(words[1:], WRAPPERS[name])
                if name == "env":
                    words = [w for w in words if not ASSIGN.match(w.raw)]
                if name == "exec" and not words:
                    return
                continue
            if name == "command" and len(words) > 1 and words[1].value not in ("-v", "-V"):
                words = words[1:]
                continue
            break
        if not words:
            return
        first = words[0]
        if first.value == "command":  # command -v X...: a check in run.sh; in what it starts, a need
            for w in words[2:]:
                targets = [w]
                m = re.fullmatch(r'"?\$\{?(\w+)\}?"?', w.raw)
                if m and m.group(1) in loops:
                    targets = loops[m.group(1)]
                for t in targets:
                    prog = self.resolve(sc, func, t, env)
                    if isinstance(prog, str) and prog != PROJECT:
                        self.events.append(Event("cover" if entry else "use", prog, where, entry))
            return
        if first.value in BUILTINS or first.raw.startswith("(("):
            return
        target = self.resolve(sc, func, first, env)
        args = words[1:]
        if isinstance(target, tuple) and target[0] == "func":
            if target[1] in sc.wrappers:
                self.command(sc, func, Cmd(args, n.assigns, n.line), selector, env, entry, loops)
                return
            if target[1] == NEED and sc.rel == "run.sh":
                self.need(sc, func, args, where, entry)
            self.call(sc, target[1], selector, local_env, entry)
            return
        if target is None:
            return
        if isinstance(target, tuple) and target[0] == "unresolved":
            self.events.append(Event("unresolved", target[1], where, entry))
            return
        if isinstance(target, tuple) and target[0] == "script":
            self.run_script(target[1], [a.value or "" for a in args], local_env, entry=False)
            return
        if target in ("bash", "sh") and args and not args[0].raw.startswith("-"):
            script = self.resolve(sc, func, args[0], env)
            if isinstance(script, tuple) and script[0] == "script":
                self.events.append(Event("use", target, where, entry))
                self.run_script(script[1], [a.value or "" for a in args[1:]], local_env, entry=False)
                return
        if target == PROJECT:
            if len(args) >= 2 and args[0].value == "-m" and args[1].value == "pytest":
                for a in args[2:]:
                    if a.value and a.value.endswith(".py"):
                        self.python_tests(self.root / a.value)
            return
        if len(args) >= 2 and args[0].value == "-m" and re.fullmatch(r"python3(\.\d+)?", Path(target).name):
            target = f"{target} -m {args[1].value}"
        self.events.append(Event("use", target, where, entry))

    def need(self, sc: Script, func, args: list[Word], where: str, entry: bool) -> None:
        for w in args[1:]:
            if w.value is None or "=" not in w.value:
                self.events.append(Event("unresolved", f"{NEED} entry {w.raw} (write PROGRAM=PACKAGE out)", where, entry))
                continue
            self.events.append(Event("cover", w.value.rsplit("=", 1)[0], where, entry))

    # --- the test files pytest is given: their host programs -------------------------------------
    def python_tests(self, path: Path, seen: set | None = None) -> None:
        seen = set() if seen is None else seen
        if path in seen or not path.is_file():
            return
        seen.add(path)
        conftest = path.parent / "conftest.py"
        if conftest != path and conftest.is_file():
            self.python_tests(conftest, seen)
        tree = ast.parse(path.read_text())
        rel = str(path.relative_to(self.root))
        names = {}  # module-level NAME = expression, for paths such as STANDIN = REPO / "workers" / "x.sh"
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                names[node.targets[0].id] = node.value
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                self.python_tests(path.parent / (node.module.replace(".", "/") + ".py"), seen)
        # `for tool in ("a", "b"): ... shutil.which(tool)`: the names the loop runs over
        loop_of: dict[int, list[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and isinstance(node.iter, (ast.Tuple, ast.List)):
                consts = [e.value for e in node.iter.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Name) and inner.id == node.target.id and len(consts) == len(node.iter.elts):
                        loop_of[id(inner)] = consts
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            fn = ast.unparse(node.func)
            where = f"{rel}:{node.lineno}"
            if fn == "shutil.which" and node.args:
                a = node.args[0]
                progs = [a.value] if isinstance(a, ast.Constant) else loop_of.get(id(a), [])
                for p in progs:
                    self.events.append(Event("use", p, where, False))
            # subprocess runs argv; nsenter(argv) runs it too, as the host's program (only the mount
            # namespace changes), where chroot(argv) and Board.run(argv) run the board's
            elif (re.fullmatch(r"subprocess\.(run|Popen|call|check_call|check_output)", fn)
                  or fn.split(".")[-1] == "nsenter") and node.args:
                self.python_argv(node.args[0], names, where)

    def python_argv(self, argv, names: dict, where: str) -> None:
        if not isinstance(argv, (ast.List, ast.Tuple)) or not argv.elts:
            return
        elts = list(argv.elts)
        consts = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None for e in elts]
        while consts and consts[0] in WRAPPERS:
            opts, k = WRAPPERS[consts[0]], 1
            while k < len(consts) and consts[k] and consts[k].startswith("-"):
                k += 2 if consts[k] in opts else 1
            elts, consts = elts[k:], consts[k:]
        if not consts or consts[0] is None:
            return  # sys.executable, the venv's edgecc: the project's
        prog = consts[0]
        self.events.append(Event("use", prog, where, False))
        if prog in ("bash", "sh") and len(elts) > 1:
            script = repo_path_of(elts[1], names)
            if script is not None and (self.root / script).is_file():
                self.run_script(self.root / script, [c or "" for c in consts[2:3]], {}, entry=False)


def assigned_word(w: Word) -> Word:
    """The value of NAME=VALUE as a word of its own (an array's first element for NAME=(a b))."""
    m = ASSIGN.match(w.raw)
    rest = w.raw[m.end():]
    if rest.startswith("("):
        rest = rest[1:-1].split()[0] if rest[1:-1].split() else ""
    return Lexer(rest).word() if rest else Word("", None)


def skip_options(words: list[Word], with_value: set[str]) -> list[Word]:
    k = 0
    while k < len(words) and words[k].raw.startswith("-"):
        k += 2 if words[k].raw in with_value else 1
    return words[k:]


def repo_path_of(node, names: dict) -> str | None:
    """REPO / "workers" / "x.sh" (also through str(...) or a module-level name) as "workers/x.sh"."""
    while isinstance(node, ast.Call) and ast.unparse(node.func) == "str" and node.args:
        node = node.args[0]
    if isinstance(node, ast.Name) and node.id in names:
        node = names[node.id]
    parts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return "/".join(parts) if parts and parts[-1].endswith(".sh") else None


# --- the check ---------------------------------------------------------------------------------

def tasks(root: Path) -> list[str]:
    """run.sh's tasks: the words of the branches of main()'s `case`."""
    sc = Script(root / "run.sh", root)
    found = []
    for n in walk(sc.funcs["main"]):
        if isinstance(n, Case):
            for patterns, _ in n.branches:
                found += [p for p in patterns if re.fullmatch(r"[a-z][\w-]*", p)]
    return found


def task_events(root: Path, task: str) -> list[Event]:
    w = Walker(root)
    w.run_script(root / "run.sh", [task], {}, entry=True)
    return w.events


def same_program(used: str, covered: str) -> bool:
    return used == covered or ("/" in covered and " " not in used and Path(covered).name == Path(used).name)


def problems(root: Path) -> list[str]:
    """Each external program a task runs that it neither installs nor checks for first, by task."""
    found = []
    for task in tasks(root):
        covered: list[str] = []
        reported = set()
        for ev in task_events(root, task):
            if ev.kind == "cover" and ev.entry:
                covered.append(ev.program)
            elif ev.kind == "unresolved":
                found.append(f"run.sh {task}: cannot tell what `{ev.program}` runs ({ev.where}); resolve it or add it to DYNAMIC")
            elif ev.kind == "use":
                name = ev.program if ev.program.startswith("/") or " " in ev.program else Path(ev.program).name
                if name in BASE or name in BUILTINS or name in PROJECT_SCRIPTS or ev.program in reported:
                    continue
                if not any(same_program(ev.program, c) for c in covered):
                    reported.add(ev.program)
                    found.append(f"run.sh {task}: runs {ev.program} ({ev.where}) but neither installs nor checks for it "
                                 f"first (add it to the task's {NAME_HINT})")
    return found


NAME_HINT = f"`{NEED} TASK PROGRAM=PACKAGE...` call, or `command -v PROGRAM || die` in run.sh"


def need_entries(root: Path, task: str) -> list[str]:
    """The PROGRAM=PACKAGE words of the need_programs calls a task reaches in run.sh."""
    text = (root / "run.sh").read_text()
    entries = []
    for m in re.finditer(rf"^\s*{NEED} {re.escape(task)} ((?:.|\\\n)*?)(?<!\\)$", text, re.M):
        entries += re.findall(r"'[^']*'|\S+=\S+", m.group(1).replace("\\\n", " "))
    return [e.strip("'") for e in entries]


# --- tests -----------------------------------------------------------------------------------

def test_every_task_installs_or_checks_for_the_programs_it_runs():
    assert problems(REPO) == []


def test_the_walk_reaches_what_pi_test_runs():
    """Guards the reader itself: the Debian programs pi-test needs are found where they are run."""
    used = {(ev.program, ev.where.split(":")[0]) for ev in task_events(REPO, "pi-test") if ev.kind == "use"}
    for prog, where in [("mmdebstrap", "workers/pi-standin.sh"), ("podman", "workers/pi-standin.sh"),
                        ("qemu-aarch64-static", "workers/pi-standin.sh"), ("/usr/sbin/sshd", "tests/pi_board.py"),
                        ("ssh-keygen", "tests/pi_board.py"), ("buildah", "tests/test_container.py"),
                        ("podman", "tests/test_container.py"), ("ssh", "run.sh"), ("scp", "run.sh")]:
        assert (prog, where) in used, f"{prog} in {where} not found: {sorted(used)}"
    # the board's own programs (setup-pi.sh runs inside the arm64 root) are not the host's
    assert not any(prog == "/usr/bin/env" for prog, _ in used)
    deploy = {ev.program for ev in task_events(REPO, "deploy") if ev.kind == "use"}
    assert {"ssh", "scp"} <= deploy and "podman" not in deploy


def test_readme_commands_are_tasks_the_check_covers():
    readme = (REPO / "README.md").read_text()
    shown = set(re.findall(r"\./run\.sh ([a-z][\w-]*)", readme))
    assert {"demo", "test", "pi-test", "deploy", "setup"} <= shown
    assert shown <= set(tasks(REPO)), f"README shows run.sh tasks that run.sh does not have: {shown - set(tasks(REPO))}"


def copy_tree(tmp_path: Path) -> Path:
    """The files the check reads, in tmp, to be changed there."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "workers", root / "workers")
    (root / "tests").mkdir(parents=True)
    for f in (REPO / "tests").glob("*.py"):
        shutil.copy(f, root / "tests" / f.name)
    shutil.copy(REPO / "run.sh", root / "run.sh")
    return root


PI_TEST_PACKAGES = {"qemu-user-static", "mmdebstrap", "podman", "buildah", "openssh-server"}


def test_pi_test_installs_its_debian_packages():
    entries = need_entries(REPO, "pi-test")
    assert PI_TEST_PACKAGES <= {e.rsplit("=", 1)[1] for e in entries}, entries


@pytest.mark.parametrize("entry", need_entries(REPO, "pi-test"))
def test_removing_one_of_pi_tests_installs_fails_the_check(tmp_path, entry):
    root = copy_tree(tmp_path)
    text = (root / "run.sh").read_text()
    call = re.search(rf"^\s*{NEED} pi-test (?:.|\\\n)*?(?<!\\)$", text, re.M)
    assert call, "no need_programs call for pi-test in run.sh"
    quoted = f"'{entry}'" if " " in entry else entry
    changed = call.group(0).replace(f" {quoted}", "", 1)
    assert changed != call.group(0)
    (root / "run.sh").write_text(text.replace(call.group(0), changed))
    program = entry.rsplit("=", 1)[0]
    found = problems(root)
    assert any(p.startswith(f"run.sh pi-test: runs {program} ") for p in found), found


def test_checking_after_the_board_build_fails_the_check(tmp_path):
    """The packages must be in place before the build starts, not after it, where pi-standin.sh checked."""
    root = copy_tree(tmp_path)
    text = (root / "run.sh").read_text()
    call = re.search(rf"^\s*{NEED} pi-test (?:.|\\\n)*?(?<!\\)\n", text, re.M).group(0)
    build = re.search(r'^.*bash "\$ROOT/workers/pi-standin.sh" all\n', text, re.M).group(0)
    (root / "run.sh").write_text(text.replace(call, "").replace(build, build + call))
    found = problems(root)
    assert any(p.startswith("run.sh pi-test: runs mmdebstrap (workers/pi-standin.sh") for p in found), found


def test_an_unknown_dynamic_command_fails_the_check(tmp_path):
    root = copy_tree(tmp_path)
    text = (root / "run.sh").read_text()
    changed = text.replace("    cmd_setup\n    ensure_dataset\n", '    cmd_setup\n    "$TOOL" --x\n    ensure_dataset\n', 1)
    assert changed != text
    (root / "run.sh").write_text(changed)
    assert any(p.startswith("run.sh test: cannot tell what `$TOOL` runs") for p in problems(root))


def test_the_check_does_not_count_a_check_inside_a_started_script(tmp_path):
    """pi-standin.sh's own `command -v mmdebstrap` comes after minutes of work for podman: not a cover."""
    root = copy_tree(tmp_path)
    text = (root / "run.sh").read_text()
    (root / "run.sh").write_text(text.replace(" podman=podman", "", 1))
    found = problems(root)
    assert any(p.startswith("run.sh pi-test: runs podman (workers/pi-standin.sh") for p in found), found


# --- need_programs, run for real with programs hidden from it ---------------------------------

def fake_bin(tmp_path: Path, progs: dict[str, str]) -> Path:
    """A PATH of its own: dirname (run.sh's first line needs it) and the given scripts."""
    d = tmp_path / "bin"
    d.mkdir()
    os.symlink(shutil.which("dirname"), d / "dirname")
    for name, body in progs.items():
        (d / name).write_text(f"#!/bin/sh\n{body}\n")
        (d / name).chmod(stat.S_IRWXU)
    return d


def run_pi_test(bindir: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(bindir), "HOME": str(bindir.parent), "PYTHON": str(bindir / "python-fake")}
    return subprocess.run([shutil.which("bash"), str(REPO / "run.sh"), "pi-test"], env=env, capture_output=True,
                          text=True, timeout=60)


def test_pi_test_without_apt_stops_on_one_line_naming_what_is_missing(tmp_path):
    r = run_pi_test(fake_bin(tmp_path, {}))
    assert r.returncode == 1
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stdout + r.stderr
    for word in ("mmdebstrap", "qemu-aarch64-static", "podman", "buildah", "ssh-keygen", "qemu-user-static",
                 "openssh-client"):
        assert word in r.stderr, r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="need_programs installs only as root")
def test_pi_test_as_root_installs_each_missing_package_and_names_it(tmp_path):
    log = tmp_path / "apt.log"
    # apt-get stand-in: logs its arguments; `install` puts the programs of the packages it knows on PATH
    provides = {"mmdebstrap": "mmdebstrap", "qemu-user-static": "qemu-aarch64-static", "podman": "podman",
                "buildah": "buildah", "openssh-client": "ssh ssh-keygen scp"}
    cases = " ".join(f'{pkg}) progs="{progs}" ;;' for pkg, progs in provides.items())
    bindir = fake_bin(tmp_path, {
        "apt-get": f'echo "$*" >>{log}\n[ "$1" = install ] || exit 0\nfor p in "$@"; do progs=; case $p in {cases} esac\n'
                   f'  for x in $progs; do printf "#!/bin/sh\\nexit 0\\n" >"{tmp_path}/bin/$x"; '
                   f'/bin/chmod 755 "{tmp_path}/bin/$x"; done; done',
        "python-fake": "exit 1"})
    r = run_pi_test(bindir)
    for pkg in provides:
        assert f"==> pi-test: installing the Debian package {pkg}\n" in r.stdout, r.stdout + r.stderr
    assert log.read_text().startswith("install -y -q mmdebstrap qemu-user-static podman buildah"), log.read_text()
    if Path("/usr/sbin/sshd").exists():
        # everything is in place: pi-test goes on to setup, which the fake Python stops
        assert "edgecc needs Python >= 3.11" in r.stderr, r.stdout + r.stderr
    else:
        assert "/usr/sbin/sshd still not found after installing" in r.stderr, r.stdout + r.stderr
    assert r.returncode == 1


# --- the tables above against this machine's dpkg, where it has one ---------------------------

def dpkg_query(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dpkg-query", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg here")
def test_base_programs_come_from_required_packages():
    for pkg, progs in BASE_PACKAGES.items():
        r = dpkg_query("-W", "-f", "${Priority} ${Essential}", pkg)
        if r.returncode != 0:
            continue  # not installed here: nothing to compare with
        assert r.stdout.split()[0] == "required", f"{pkg} is {r.stdout}: its programs are not on every Debian 12"
        files = dpkg_query("-L", pkg).stdout.split()
        for prog in progs:
            assert any(f.endswith(f"bin/{prog}") for f in files), f"{prog} is not in {pkg}"


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg here")
def test_declared_packages_have_their_programs():
    """Each need_programs entry whose package is installed here: the package holds the program."""
    text = (REPO / "run.sh").read_text()
    entries = {e for task in set(re.findall(rf"^\s*{NEED} ([\w-]+) ", text, re.M)) for e in need_entries(REPO, task)}
    assert entries
    for entry in entries:
        prog, pkg = entry.rsplit("=", 1)
        if " -m " in prog or dpkg_query("-W", "-f", "${Status}", pkg).stdout != "install ok installed":
            continue
        # the package or one it pulls in directly (python3's /usr/bin/python3 is python3-minimal's)
        deps = dpkg_query("-W", "-f", "${Pre-Depends}, ${Depends}", pkg).stdout
        files = []
        for p in [pkg, *(d.split()[0] for d in re.split(r"[,|]", deps) if d.strip())]:
            files += dpkg_query("-L", p.split(":")[0]).stdout.split()
        want = prog if prog.startswith("/") else f"bin/{prog}"
        assert any(f.endswith(want) for f in files), f"neither {pkg} nor what it depends on has {prog}"
