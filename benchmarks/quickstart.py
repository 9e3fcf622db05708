"""The README's quick start on a fresh clone, and the shared-building-block counts of issue 13.

Default: clone this repository into a temporary folder, run the quick start's command 1 as the
README writes it (``python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/rfdeploy infer
rfdeploy/assets/astronaut.jpg``), each part timed as a subprocess (wall time, perf_counter), then
``infer`` ``--runs`` more times (warm: median), the venv's size on disk (du), and which heavy
packages an in-process ``infer`` leaves in ``sys.modules`` (in the fresh venv, and in this
checkout's ``.venv`` where torch is installed). ``RFDEPLOY_CACHE`` points at an empty folder, so
nothing exported earlier is reused. pip installs from whatever its configuration names (index,
find-links, wheel cache): record that beside the numbers.

``--counts``: no install; over ``rfdeploy/`` (or ``--root``'s), imports against the stage order and
import cycles (the walker of tests/test_layering.py), function-level imports of the package's own
modules, and which modules hold the low-level calls for each shared fact (a grep over the code with
strings and comments stripped).

    python benchmarks/quickstart.py [--runs 5] [--keep]
    python benchmarks/quickstart.py --counts [--root DIR]
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "onnxslim", "scipy", "av", "ray", "onnx", "onnxruntime", "onnxconverter_common",
         "safetensors")

# -- quick start ------------------------------------------------------------------------------------


def readme_command_1(readme: Path) -> list[str]:
    """The parts (split on ``&&``) of the line after ``# 1.`` in the README's quick-start block."""
    lines = readme.read_text().splitlines()
    try:
        start = lines.index("## Quick start")
        i = next(k for k in range(start, len(lines)) if lines[k].lstrip().startswith("# 1."))
    except (ValueError, StopIteration):
        sys.exit(f"{readme}: no '## Quick start' section with a '# 1.' command")
    parts = [p.strip() for p in lines[i + 1].split("&&")]
    if len(parts) != 3 or not ("-m venv" in parts[0] and "pip install" in parts[1] and "rfdeploy infer" in parts[2]):
        sys.exit(f"{readme}: command 1 is not 'venv && pip install && rfdeploy infer': {lines[i + 1]!r}")
    return parts


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(cmd: str, cwd: Path, env: dict, what: str) -> tuple[float, float, str]:
    """(wall s, CPU s of the command and its children, stdout) of a shell command."""
    c, t = _children_cpu(), time.perf_counter()
    res = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    dt, dc = time.perf_counter() - t, _children_cpu() - c
    if res.returncode != 0:
        sys.exit(f"{what} failed (exit {res.returncode}): {cmd}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return dt, dc, res.stdout


def median_run(cmd: str, cwd: Path, env: dict, what: str, runs: int) -> tuple[float, float, float, float]:
    """(median wall, min wall, max wall, median CPU) over ``runs`` runs."""
    walls, cpus = zip(*(timed(cmd, cwd, env, what)[:2] for _ in range(runs)))
    return statistics.median(walls), min(walls), max(walls), statistics.median(cpus)


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def largest_packages(venv: Path, n: int = 5) -> list[tuple[str, float]]:
    site = next(venv.glob("lib/python*/site-packages"))
    sizes = [(p.name, du_mb(p)) for p in site.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", "__pycache__"))]
    return sorted(sizes, key=lambda e: -e[1])[:n]


_PROBE = r"""
import importlib.util, json, sys
from rfdeploy.cli import main
try:
    main(["infer", sys.argv[1]], standalone_mode=False)
except SystemExit as e:
    if e.code:
        raise
heavy = sys.argv[2].split(",")
print("PROBE " + json.dumps({"imported": [m for m in heavy if m in sys.modules],
                             "installed": [m for m in heavy if importlib.util.find_spec(m) is not None],
                             "modules": len(sys.modules)}), file=sys.stderr)
"""


def probe_imports(python: Path, cwd: Path, env: dict) -> dict:
    """An in-process ``infer`` on the example: which heavy packages are installed, which it imported."""
    res = subprocess.run([str(python), "-c", _PROBE, "rfdeploy/assets/astronaut.jpg", ",".join(HEAVY)], cwd=cwd,
                         env=env, capture_output=True, text=True)
    line = next((ln for ln in res.stderr.splitlines() if ln.startswith("PROBE ")), None)
    if res.returncode != 0 or line is None:
        sys.exit(f"import probe failed with {python} (exit {res.returncode}):\n{res.stderr[-4000:]}")
    return json.loads(line[len("PROBE "):])


def quickstart(runs: int, keep: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rfdeploy-quickstart-"))
    try:
        clone = tmp / "rfdeploy"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        head = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        venv_part, install_part, infer_part = readme_command_1(clone / "README.md")
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env["RFDEPLOY_CACHE"] = str(tmp / "cache")  # nothing exported or built earlier is reused

        load = os.getloadavg()[0]
        t_venv, c_venv, _ = timed(venv_part, clone, env, "venv")
        t_install, c_install, _ = timed(install_part, clone, env, "pip install")
        t_first, c_first, out = timed(infer_part, clone, env, "first infer")
        faces = len(json.loads(out.splitlines()[0])["faces"])
        warm, warm_min, warm_max, warm_cpu = median_run(infer_part, clone, env, "warm infer", runs)
        # the same run's floor: the interpreter starting and importing onnxruntime, nothing else
        floor_cmd = ".venv/bin/python -c 'import onnxruntime'"
        floor, _, _, floor_cpu = median_run(floor_cmd, clone, env, "import floor", runs)
        size = du_mb(clone / ".venv")
        biggest = largest_packages(clone / ".venv")
        fresh = probe_imports(clone / ".venv" / "bin" / "python", clone, env)
        dev_python = REPO / ".venv" / "bin" / "python"
        dev = probe_imports(dev_python, REPO, env) if dev_python.is_file() else None
        cache_left = sorted(str(p.relative_to(tmp)) for p in (tmp / "cache").rglob("*")) if (tmp / "cache").exists() else []

        print(f"fresh clone of {REPO} at {head}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
              f"1-min load average before / after: {load:.2f} / {os.getloadavg()[0]:.2f}")
        print(f"README command 1: {venv_part} && {install_part} && {infer_part}\n")
        print("| figure | wall | CPU (user+sys) |")
        print("|---|---|---|")
        print(f"| `{venv_part}` | {t_venv:.1f} s | {c_venv:.1f} s |")
        print(f"| `{install_part}` | {t_install:.1f} s | {c_install:.1f} s |")
        print(f"| `{infer_part}`, first run (process wall) | {t_first:.2f} s ({faces} faces) | {c_first:.2f} s |")
        print(f"| the same, warm: median of {runs} (min-max) | {warm:.2f} s ({warm_min:.2f}-{warm_max:.2f}) | "
              f"{warm_cpu:.2f} s |")
        print(f"| same-run floor `{floor_cmd}`, median of {runs} | {floor:.2f} s (warm infer {warm / floor:.1f}x) | "
              f"{floor_cpu:.2f} s |")
        print(f"| quick-start command 1, total | {t_venv + t_install + t_first:.1f} s | "
              f"{c_venv + c_install + c_first:.1f} s |")
        print(f"\nits venv on disk (du -sk .venv): {size:.0f} MB; largest packages: "
              f"{', '.join(f'{n} {mb:.0f} MB' for n, mb in biggest)}")
        print(f"fresh venv: installed {', '.join(fresh['installed']) or '-'}; an in-process infer imported "
              f"{', '.join(fresh['imported']) or '-'} ({fresh['modules']} modules loaded)")
        if dev is not None:
            print(f"{dev_python.relative_to(REPO)} (every extra): installed {', '.join(dev['installed']) or '-'}; "
                  f"infer imported {', '.join(dev['imported']) or '-'} ({dev['modules']} modules loaded)")
        print(f"files left in RFDEPLOY_CACHE by these runs: {len(cache_left)}")
    finally:
        if keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# -- counts -----------------------------------------------------------------------------------------

# (what, regular expression over code without strings and comments)
CALLS = [
    ("parse the preprocessing contract from model metadata",
     r"PreprocessContract\.from_json\(|\.get\(\s*(?:\w+\.)*CONTRACT\s*\)|\[\s*(?:\w+\.)*CONTRACT\s*\]"),
    ("parse the model config from model metadata", r"\.get\(\s*(?:\w+\.)*CONFIG\s*\)|\[\s*(?:\w+\.)*CONFIG\s*\]"),
    ("read or write ONNX metadata_props", r"\bmetadata_props\b|\bget_modelmeta\b|\bcustom_metadata_map\b"),
    ("parse a safetensors header (safe_open, 8-byte length)", r"\bsafe_open\(|\bint\.from_bytes\("),
    ("decode image files or bytes", r"\bImage\.open\(|\bcv2\.im(?:read|decode)\(|\bimageio\.|\btorchvision\.io\b|"
                                     r"\bdecode_(?:jpeg|png)\(|\bread_image\("),
    ("decode video", r"\bav\.open\(|\bVideoCapture\("),
    ("rename a finished file into place (os.replace / rename / shutil.move)",
     r"\bos\.(?:replace|rename)\(|\.rename\(|\bshutil\.move\("),
    ("create a private temporary (mkstemp / mkdtemp / NamedTemporaryFile)",
     r"\bmkstemp\(|\bmkdtemp\(|\bNamedTemporaryFile\("),
    ("build an onnxruntime session", r"\bInferenceSession\("),
]


def _code_and_strings(path: Path) -> tuple[str, list[str]]:
    """The file's code with string literals and comments blanked in place, and its string literals."""
    text = path.read_text()
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    blank = {tokenize.STRING, tokenize.COMMENT} | {getattr(tokenize, n) for n in (
        "FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END") if hasattr(tokenize, n)}
    spans, strings = [], []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in blank:
            spans.append((offsets[tok.start[0] - 1] + tok.start[1], offsets[tok.end[0] - 1] + tok.end[1]))
        if tok.type == tokenize.STRING:
            try:
                strings.append(ast.literal_eval(tok.string))
            except (ValueError, SyntaxError):
                pass
    code, pos = [], 0
    for a, b in spans:
        code.append(text[pos:a])
        code.append('""')
        pos = b
    code.append(text[pos:])
    return "".join(code), strings


def _layering(root: Path):
    spec = importlib.util.spec_from_file_location("_layering", REPO / "tests" / "test_layering.py")
    lay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lay)
    lay.PACKAGE_DIR = root / "rfdeploy"  # the walker's functions read this global
    return lay


def _function_level(path: Path) -> set[int]:
    """Lines of import statements inside functions."""
    lines = set()
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines |= {n.lineno for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return lines


def counts(root: Path) -> None:
    lay = _layering(root)
    modules, graph = lay._graph()
    against, stray = [], [m for m in modules if lay._stage(m) is None]
    for m, edges in graph.items():
        src = lay._stage(m)
        for target, line in edges:
            dst = lay._stage(target)
            if src and dst and dst != src and lay.LEVELS[dst] >= lay.LEVELS[src]:
                against.append(f"{lay._where(modules, m, line)}: {src} imports {dst} ({target})")
    cycles = lay._cycles(graph)
    local = sum(1 for m, p in modules.items() for _, line in graph[m] if line in _function_level(p))

    pkg = root / "rfdeploy"
    files = sorted(pkg.rglob("*.py"))
    meta_file = pkg / "core" / "metadata.py"
    # the key strings as this checkout's core.metadata defines them (also for a --root without it)
    keys = {n.value.value for n in ast.parse((REPO / "rfdeploy" / "core" / "metadata.py").read_text()).body
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
            and n.value.value.startswith("rfdeploy.")}
    hits: dict[str, list[str]] = {what: [] for what, _ in CALLS}
    literal_hits = []
    for f in files:
        code, strings = _code_and_strings(f)
        rel = str(f.relative_to(root))
        for what, pattern in CALLS:
            if re.search(pattern, code):
                hits[what].append(rel)
        if f != meta_file and any(s in keys for s in strings if isinstance(s, str)):
            literal_hits.append(rel)

    print(f"{pkg}: {len(files)} modules\n")
    print("| figure | count | where |")
    print("|---|---|---|")
    print(f"| imports against the stage order (module- and function-level) | {len(against)} | "
          f"{'; '.join(against) or '-'} |")
    print(f"| import cycles | {len(cycles)} | {'; '.join(' <-> '.join(c) for c in cycles) or '-'} |")
    print(f"| modules outside every stage | {len(stray)} | {', '.join(stray) or '-'} |")
    print(f"| function-level imports of the package's own modules | {local} | |")
    for what, _ in CALLS:
        print(f"| modules that {what} | {len(hits[what])} | {', '.join(hits[what]) or '-'} |")
    print(f"| modules spelling a metadata key as a literal outside core/metadata.py | {len(literal_hits)} | "
          f"{', '.join(literal_hits) or '-'} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="warm infer runs after the first (median)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone and venv")
    ap.add_argument("--counts", action="store_true", help="only the static counts over rfdeploy/")
    ap.add_argument("--root", type=Path, default=REPO, help="--counts: the checkout to count (default: this one)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    if args.counts:
        if not (args.root / "rfdeploy").is_dir():
            ap.error(f"--root {args.root}: no rfdeploy/ folder there")
        counts(args.root.resolve())
    else:
        quickstart(args.runs, args.keep)


if __name__ == "__main__":
    main()
