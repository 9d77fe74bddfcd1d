"""scripts/mutation_check.py stays applicable: every deliberate break still names one line of today's code
(the script itself, run by hand, shows the suite kills each; README "Tests")."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_mutant_names_exactly_one_line_and_existing_tests():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation_check"] = module  # dataclasses resolve their module while the class is built
    spec.loader.exec_module(module)
    assert len(module.MUTANTS) >= 10
    for m in module.MUTANTS:
        assert (ROOT / m.file).read_text().count(m.old) == 1, m.name
        assert m.old != m.new and all((ROOT / t).is_file() for t in m.tests), m.name
