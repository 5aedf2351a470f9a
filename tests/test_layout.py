"""The house: the engine imports nothing of the adapters, the adapters use only the engine's public
surface, and no module grows past about 400 lines without saying why in its docstring."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# what api/ and cli/ may import from the engine: the package and the modules its docstring names
PUBLIC = {"leukodx.engine", "leukodx.engine.case", "leukodx.engine.assessment", "leukodx.engine.orders",
          "leukodx.engine.parse", "leukodx.engine.render", "leukodx.engine.errors", "leukodx.engine.kb",
          "leukodx.engine.conditions", "leukodx.engine.units", "leukodx.engine.timeutil",
          "leukodx.engine.pgx"}


def _imports(path: Path, package: str) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:     # relative: resolve against the module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.add(node.module)
    return out


def _modules(folder: str, package: str) -> list[tuple[Path, str]]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        sub = path.relative_to(ROOT / folder).parent.parts
        out.append((path, ".".join([package, *sub])))
    return out


def test_the_engine_imports_nothing_of_the_adapters():
    bad = {str(p.relative_to(ROOT)): sorted(i for i in _imports(p, pkg) if i.startswith(("leukodx.api", "leukodx.cli")))
           for p, pkg in _modules("engine", "leukodx.engine")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_adapters_use_only_the_engines_public_surface():
    bad = {}
    for folder, package in (("api", "leukodx.api"), ("cli", "leukodx.cli")):
        for p, pkg in _modules(folder, package):
            private = sorted(i for i in _imports(p, pkg) if i.startswith("leukodx.engine") and i not in PUBLIC)
            if private:
                bad[str(p.relative_to(ROOT))] = private
    assert bad == {}


def test_long_modules_say_why():
    long = []
    for folder in ("engine", "api", "cli"):
        for path in (ROOT / folder).rglob("*.py"):
            lines = path.read_text(encoding="utf-8").count("\n")
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            if lines > 420 and "on purpose" not in doc:
                long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert long == []


def test_every_public_name_of_the_engine_resolves():
    import leukodx.engine as engine
    missing = [name for name in engine.__all__ if getattr(engine, name, None) is None]
    assert missing == []
    assert set(engine.__all__) <= set(dir(engine))


def test_the_command_line_and_the_supervisor_start_without_the_pipeline():
    """`leukodx --help` and `leukodx serve`'s supervisor (which only starts workers) load neither pint nor the
    pipeline: each worker builds its own engine, and the supervisor's start-up delays them all."""
    import subprocess
    import sys
    code = ("import sys\n"
            "from leukodx.cli.main import build_parser\n"
            "build_parser()\n"
            "from leukodx.api.serving import serve\n"
            "print(sorted(m for m in ('pint', 'leukodx.engine.pipeline', 'durable') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
