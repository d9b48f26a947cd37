"""The Docker recipes stay buildable and in step with the project, checked without a Docker daemon:
every file a Dockerfile COPYs exists and survives .dockerignore, the shared lock pins every runtime
dependency within pyproject.toml's ranges, the images run the Python the lock was resolved with,
torch is the version .ci/run tests, and the entrypoint is the project's console script. The checker
is also run on broken copies, to show it catches them."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # stdlib from Python 3.11

REPO = Path(__file__).resolve().parents[2]
GPU, CPU = "docker/Dockerfile", "docker/Dockerfile.cpu"
LOCK = "docker/requirements.lock"
EXTRAS = ("s3",)  # optional dependency groups the images install too
# Generated files a COPY'd directory may hold that the build context is expected to drop.
ARTIFACTS = re.compile(r"(^|/)(__pycache__|\.pytest_cache|\.ruff_cache|[^/]*\.egg-info)(/|$)|\.py[cod]$")


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        instr, _, args = (buf + line).partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def _args(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def copy_sources(instrs: list[tuple[str, str]]) -> list[str]:
    """Build-context paths that COPY/ADD read (not --from=stage, not URLs)."""
    out = []
    for instr, args in instrs:
        if instr not in ("COPY", "ADD"):
            continue
        words = _args(args)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        paths = [w for w in words if not w.startswith("--")]
        out += [p for p in paths[:-1] if not re.match(r"^(https?://|git@)", p)]
    return out


def arg_defaults(instrs: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for instr, args in instrs:
        if instr == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            out[name.strip()] = value.strip().strip("\"'")
    return out


def entrypoint(instrs: list[tuple[str, str]]) -> list[str]:
    found = [args for instr, args in instrs if instr == "ENTRYPOINT"]
    return _args(found[-1]) if found else []


def _glob_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over '/'-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out, i = out + "[" + ("^" + body[1:] if body[0] in "^!" else body) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore(text: str) -> list[tuple[bool, re.Pattern]]:
    """[(is_exception, regex)] in file order; the last pattern matching a path decides."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:].strip() if exception else line
        pattern = re.sub(r"^(\./|/)+", "", pattern).rstrip("/")
        out.append((exception, _glob_regex(pattern)))
    return out


def ignored(path: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: a pattern matches a path or any of its parent directories."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for exception, rx in patterns:
        if any(rx.match(p) for p in prefixes):
            result = not exception
    return result


def ci_torch_version(repo: Path) -> str:
    m = re.search(r"torch==([0-9][\w.]*)", (repo / ".ci/run").read_text())
    assert m, ".ci/run installs no pinned torch"
    return m.group(1)


def read_lock(repo: Path) -> tuple[dict[str, str], list[str]]:
    """({canonical name: version}, problems) for docker/requirements.lock."""
    pins, problems = {}, []
    for n, line in enumerate((repo / LOCK).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][\w.!+-]*)", line)
        if not m:
            problems.append(f"{LOCK}:{n}: {line!r} is not an exact `name==version` pin")
            continue
        name = canonicalize_name(m.group(1))
        if name in pins:
            problems.append(f"{LOCK}:{n}: {name} is pinned twice")
        pins[name] = m.group(2)
    return pins, problems


def check_lock(repo: Path) -> list[str]:
    pins, problems = read_lock(repo)
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for e in EXTRAS for r in project["optional-dependencies"][e]]
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{LOCK}: runtime dependency {req.name} is not pinned")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{LOCK}: {req.name}=={version} is outside pyproject.toml's {req}")
    torch = ci_torch_version(repo)
    if pins.get("torch") != torch:
        problems.append(f"{LOCK}: torch=={pins.get('torch')} but .ci/run tests torch=={torch}")
    return problems


def check_dockerfile(repo: Path, dockerfile: str) -> list[str]:
    """Problems that would break `docker build -f <dockerfile> <repo>` or drift from the project."""
    instrs = parse_dockerfile((repo / dockerfile).read_text())
    patterns = dockerignore((repo / ".dockerignore").read_text()) if (repo / ".dockerignore").exists() else []
    problems = []
    sources = copy_sources(instrs)
    for src in sources:
        matches = [repo] if src in (".", "./") else sorted(repo.glob(src.rstrip("/")))
        if not matches:
            problems.append(f"{dockerfile}: COPY source {src} does not exist")
        for path in matches:
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            rel = [p.relative_to(repo).as_posix() for p in files]
            rel = [r for r in rel if not ARTIFACTS.search(r)]
            dropped = [r for r in rel if ignored(r, patterns)]
            if not rel or dropped:
                problems.append(
                    f"{dockerfile}: COPY source {src} is excluded by .dockerignore "
                    f"({', '.join(dropped[:3]) or 'no files left'})"
                )
    if LOCK not in sources:
        problems.append(f"{dockerfile}: does not COPY the shared lock {LOCK}")

    defaults = arg_defaults(instrs)
    torch = ci_torch_version(repo)
    if defaults.get("TORCH_VERSION") != torch:
        problems.append(
            f"{dockerfile}: ARG TORCH_VERSION={defaults.get('TORCH_VERSION')} but .ci/run tests "
            f"torch=={torch}"
        )
    if not re.search(r"torch==\$\{?TORCH_VERSION\}?", (repo / dockerfile).read_text()):
        problems.append(f"{dockerfile}: torch is not installed as torch==${{TORCH_VERSION}}")

    if any(instr == "ENV" and "PYTORCH_VERSION" in args for instr, args in instrs):
        problems.append(
            f"{dockerfile}: sets PYTORCH_VERSION, which makes enroot's PyTorch hook export "
            "RANK/WORLD_SIZE under Slurm (dist-llm would then not start torchrun)"
        )

    scripts = tomllib.loads((repo / "pyproject.toml").read_text())["project"].get("scripts", {})
    entry = entrypoint(instrs)
    if entry != ["dist-llm"]:
        problems.append(f'{dockerfile}: ENTRYPOINT is {entry}, expected ["dist-llm"]')
    elif entry[0] not in scripts:
        problems.append(f"{dockerfile}: ENTRYPOINT {entry[0]} is not a [project.scripts] console script")
    return problems


def check_base_images(repo: Path) -> list[str]:
    """Both images run the Python the lock was resolved with (pins such as orjson==3.8.3 have wheels
    for some Pythons only); the GPU image compiles DeepSpeed ops (needs a -devel CUDA base) and takes
    torch from the wheel index of the same CUDA major.minor; the CPU image uses the CPU wheel index."""
    problems = []
    m = re.search(r"^# python (\d+\.\d+)\s*$", (repo / LOCK).read_text(), re.M)
    if not m:
        problems.append(f"{LOCK}: no `# python X.Y` line saying which Python it was resolved with")
    gpu = arg_defaults(parse_dockerfile((repo / GPU).read_text()))
    cpu = arg_defaults(parse_dockerfile((repo / CPU).read_text()))
    if m and gpu.get("PYTHON_VERSION") != m.group(1):
        problems.append(
            f"{GPU}: PYTHON_VERSION={gpu.get('PYTHON_VERSION')} but {LOCK} was resolved "
            f"with Python {m.group(1)}"
        )
    if m and not re.fullmatch(rf"python:{re.escape(m.group(1))}(-.*)?", cpu.get("PYTHON_IMAGE", "")):
        problems.append(
            f"{CPU}: PYTHON_IMAGE={cpu.get('PYTHON_IMAGE')} but {LOCK} was resolved with Python {m.group(1)}"
        )
    image, index = gpu.get("CUDA_IMAGE", ""), gpu.get("TORCH_INDEX_URL", "")
    if "devel" not in image:
        problems.append(f"{GPU}: CUDA_IMAGE={image!r} is not a -devel image (DeepSpeed JIT needs nvcc)")
    m = re.search(r":(\d+)\.(\d+)", image)
    if not m or not index.rstrip("/").endswith(f"/cu{m.group(1)}{m.group(2)}"):
        problems.append(f"{GPU}: TORCH_INDEX_URL={index!r} does not match the CUDA of {image!r}")
    if not cpu.get("TORCH_INDEX_URL", "").rstrip("/").endswith("/cpu"):
        problems.append(f"{CPU}: TORCH_INDEX_URL={cpu.get('TORCH_INDEX_URL')!r} is not the CPU wheel index")
    return problems


def check_all(repo: Path) -> list[str]:
    return (
        check_lock(repo) + check_dockerfile(repo, GPU) + check_dockerfile(repo, CPU) + check_base_images(repo)
    )


def test_docker_recipes_match_the_project():
    assert check_all(REPO) == []


def test_both_images_install_the_same_lock_and_project():
    for dockerfile in (GPU, CPU):
        instrs = parse_dockerfile((REPO / dockerfile).read_text())
        assert {"pyproject.toml", "README.md", "dist_llm", "data_prep", "configs", LOCK} <= set(
            copy_sources(instrs)
        ), dockerfile
        text = (REPO / dockerfile).read_text()
        assert "pip install -r" in text and "-e ." in text, dockerfile
        assert entrypoint(instrs) == ["dist-llm"] and ("CMD", '["--help"]') in instrs, dockerfile


def test_dockerignore_semantics():
    patterns = dockerignore("*\n!dist_llm\n!docker/requirements.lock\n**/__pycache__\n/runs/\n")
    assert not ignored("dist_llm/cli.py", patterns)
    assert ignored("dist_llm/__pycache__/cli.cpython-311.pyc", patterns)
    pyc = dockerignore("**/*.py[cod]")
    assert ignored("x/y.pyc", pyc) and not ignored("x/y.py", pyc)
    assert ignored("runs/tiny/metrics.jsonl", patterns) and ignored("tests/test_cli.py", patterns)
    assert not ignored("docker/requirements.lock", patterns) and ignored("docker/Dockerfile", patterns)
    arrow = dockerignore("**/*.arrow")
    assert ignored("a/b/c.arrow", arrow) and ignored("c.arrow", arrow)
    assert not ignored("configs/tiny.yaml", dockerignore("*.yaml"))  # `*` does not cross directories


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The files the checks read, copied so a test can break them."""
    for rel in ("pyproject.toml", "README.md", ".ci/run", ".dockerignore", "docker"):
        src, dst = REPO / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    for rel in ("configs", "launch"):
        shutil.copytree(REPO / rel, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__"))
    for rel in ("dist_llm", "data_prep"):  # large and never modified by the tests: linked
        (tmp_path / rel).symlink_to(REPO / rel, target_is_directory=True)
    assert check_all(tmp_path) == []
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_checker_catches_a_missing_copy_source(repo_copy: Path):
    shutil.rmtree(repo_copy / "launch")
    problems = check_all(repo_copy)
    assert any("COPY source launch does not exist" in p for p in problems), problems
    _edit(repo_copy / GPU, "COPY configs ./configs", "COPY configs ./configs\nCOPY scripts/setup.sh /opt/")
    assert any("COPY source scripts/setup.sh does not exist" in p for p in check_all(repo_copy))


def test_checker_catches_a_copy_source_the_dockerignore_drops(repo_copy: Path):
    (repo_copy / ".dockerignore").write_text((repo_copy / ".dockerignore").read_text() + "configs/*.yaml\n")
    problems = check_all(repo_copy)
    assert any("COPY source configs is excluded by .dockerignore" in p for p in problems), problems
    _edit(repo_copy / ".dockerignore", "!docker/requirements.lock\n", "")
    assert any(f"COPY source {LOCK} is excluded" in p for p in check_all(repo_copy))


def test_checker_catches_pins_that_drift_from_pyproject(repo_copy: Path):
    lock = repo_copy / LOCK
    numpy = re.search(r"^numpy==.*$", lock.read_text(), re.M).group(0)
    _edit(lock, numpy + "\n", "numpy==1.20.0\n")  # pyproject wants numpy>=1.24
    _edit(lock, "\norjson==", "\n# orjson==")  # a runtime dependency left unpinned
    _edit(lock, "\nsafetensors==", "\nsafetensors>=")  # a range is not a pin
    problems = check_lock(repo_copy)
    assert any("numpy==1.20.0 is outside" in p for p in problems), problems
    assert any("orjson is not pinned" in p for p in problems), problems
    assert any("is not an exact `name==version` pin" in p for p in problems), problems


def test_checker_catches_a_torch_that_is_not_the_tested_one(repo_copy: Path):
    torch = ci_torch_version(REPO)
    _edit(repo_copy / ".ci/run", f"torch=={torch}", "torch==9.9.9")
    problems = check_all(repo_copy)
    assert any("torch==" + torch + " but .ci/run tests torch==9.9.9" in p for p in problems), problems
    assert sum("ARG TORCH_VERSION" in p for p in problems) == 2, problems


def test_checker_catches_an_image_python_other_than_the_locks(repo_copy: Path):
    _edit(repo_copy / GPU, "ARG PYTHON_VERSION=3.11", "ARG PYTHON_VERSION=3.12")
    _edit(repo_copy / CPU, "ARG PYTHON_IMAGE=python:3.11-slim", "ARG PYTHON_IMAGE=python:3.12-slim")
    problems = check_all(repo_copy)
    assert any(p.startswith(GPU + ": PYTHON_VERSION=3.12 but") for p in problems), problems
    assert any(p.startswith(CPU + ": PYTHON_IMAGE=python:3.12-slim but") for p in problems), problems


def test_checker_catches_a_wrong_entrypoint_base_and_env(repo_copy: Path):
    _edit(repo_copy / CPU, 'ENTRYPOINT ["dist-llm"]', 'ENTRYPOINT ["python", "-m", "dist_llm.cli"]')
    _edit(repo_copy / "pyproject.toml", 'dist-llm = "dist_llm.cli:main"', 'dllm = "dist_llm.cli:main"')
    cuda_image = arg_defaults(parse_dockerfile((repo_copy / GPU).read_text()))["CUDA_IMAGE"]
    _edit(repo_copy / GPU, "CUDA_IMAGE=" + cuda_image, "CUDA_IMAGE=" + cuda_image.replace("devel", "runtime"))
    _edit(
        repo_copy / GPU,
        "ENV DEBIAN_FRONTEND=noninteractive",
        "ENV PYTORCH_VERSION=2.13.0 DEBIAN_FRONTEND=noninteractive",
    )
    problems = check_all(repo_copy)
    assert any(p.startswith(CPU + ": ENTRYPOINT is") for p in problems), problems
    assert any("ENTRYPOINT dist-llm is not a [project.scripts]" in p for p in problems), problems
    assert any("is not a -devel image" in p for p in problems), problems
    assert any("sets PYTORCH_VERSION" in p for p in problems), problems
