"""Deliberate one-line breaks of the method code, and the tests that must catch each.

For every mutant the repository's source files are copied to a temporary folder, one line is
changed there (the original text must occur exactly once), and the named tests run against the
copy. A mutant is *killed* when they fail. The unmutated copy runs the same tests first: they
must pass, or the check itself is broken.

    .venv/bin/python scripts/mutation_check.py [--only NAME ...] [--out FILE]

Prints a table (mutant → killed/survived → the first failing test) and writes it as JSON
(default ``benchmarks/results/mutation_check.json``); exits 1 when a mutant survives.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant("RGPA piecewise map: ramp from t2 instead of t1", "lit_sr/model/noise/rgpa.py",
           "mid = slope * (p - t1) + low", "mid = slope * (p - t2) + low", ("tests/test_rgpa.py",)),
    Mutant("LDG group formula: ceil instead of floor", "lit_sr/model/noise/ldg.py",
           "g = torch.floor(self.n * (m - self.m_min)", "g = torch.ceil(self.n * (m - self.m_min)", ("tests/test_ldg.py",)),
    Mutant("DAS range: window of 2k above t", "losses/vsd.py",
           "hi = (t + self.das_k).clamp(max=self.t_max - 1)", "hi = (t + 2 * self.das_k).clamp(max=self.t_max - 1)",
           ("tests/test_vsd.py",)),
    Mutant("VSD normaliser: max instead of mean |ẑ − x₀_real|", "losses/vsd.py",
           "w = (z - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)",
           "w = (z - x0_real).abs().amax(dim=(1, 2, 3), keepdim=True)", ("tests/test_vsd_reference.py",)),
    Mutant("VSD guidance: CFG around the conditional branch", "losses/vsd.py",
           "return p_u + self.cfg_scale * (p_c - p_u)", "return p_c + self.cfg_scale * (p_c - p_u)",
           ("tests/test_vsd_reference.py",)),
    Mutant("VSD fake score: trained on the noisy input instead of the target", "losses/vsd.py",
           "return self.aux_weight * F.mse_loss(pred, param.target(z, noise, t))",
           "return self.aux_weight * F.mse_loss(pred, noise)", ("tests/test_vsd_reference.py",)),
    Mutant("γ blend: weights swapped", "lit_sr/model/blend.py",
           "    return (1.0 - gamma) * x_fid + gamma * x_real\n", "    return gamma * x_fid + (1.0 - gamma) * x_real\n",
           ("tests/test_blend.py",)),
    Mutant("ε → x₀: (1 − ᾱ) instead of √(1 − ᾱ)", "lit_sr/model/parameterisation.py",
           "return (x_t - (1.0 - a).sqrt() * pred) / a.sqrt()", "return (x_t - (1.0 - a) * pred) / a.sqrt()",
           ("tests/test_parameterisation.py",)),
    Mutant("v → x₀: sign of the prediction", "lit_sr/model/parameterisation.py",
           "return _col(a, x_t) * x_t - _col(b, x_t) * pred", "return _col(a, x_t) * x_t + _col(b, x_t) * pred",
           ("tests/test_parameterisation.py",)),
    Mutant("flow matching: the scheduler's shift ignored", "lit_sr/model/parameterisation.py",
           "self.sigmas = self.shift * u / (1 + (self.shift - 1) * u)", "self.sigmas = u",
           ("tests/test_parameterisation.py",)),
    Mutant("LQFM: last layers not zero-initialised", "lit_sr/model/modulation.py",
           "_zero(nn.Conv2d(hidden, out_ch, self.kernel_size, padding=pad))",
           "nn.Conv2d(hidden, out_ch, self.kernel_size, padding=pad)", ("tests/test_lqfm.py",)),
    Mutant("LQFM: λ_t = w_t instead of 1/w_t", "lit_sr/model/parameterisation.py",
           "        return 1.0 / self.w(t)\n", "        return self.w(t)\n", ("tests/test_lqfm.py",)),
    Mutant("CoMat: attention inside the mask not normalised by the total", "losses/comat.py",
           "inside = (a * mask[:, None]).sum(-1) / (a.sum(-1) + eps)", "inside = (a * mask[:, None]).sum(-1)",
           ("tests/test_comat.py",)),
    Mutant("IFCSR depth weights: fidelity weights grow with depth", "losses/depth_vgg.py",
           "w = float(k) ** (num_layers - l)", "w = float(k) ** (l - 1)", ("tests/test_depth_vgg.py",)),
)


def copy_tree(dst: Path) -> None:
    """The files git knows of (tracked and untracked, not ignored) copied to ``dst``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: int) -> tuple[bool, str]:
    """(passed, the first failing test id or the last output line)."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("LIT_SR_CACHE", str(ROOT / ".cache" / "lit_sr"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    try:
        proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout} s"
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)
    tail = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return proc.returncode == 0, failed[0] if failed else tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", default=None, help="run the mutants whose name contains any of these")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mutation_check.json"))
    args = ap.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or any(o.lower() in m.name.lower() for o in args.only)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lit_sr_mutants_") as tmp:
        tree = Path(tmp) / "repo"
        copy_tree(tree)
        targets = tuple(sorted({t for m in mutants for t in m.tests}))
        ok, what = run_tests(tree, targets, args.timeout)
        if not ok:
            print(f"the unmutated tests fail ({what}): fix them first")
            return 2
        for m in mutants:
            path = tree / m.file
            original = path.read_text()
            if original.count(m.old) != 1:
                print(f"{m.name}: the line to break occurs {original.count(m.old)} times in {m.file}")
                return 2
            path.write_text(original.replace(m.old, m.new))
            t0 = time.perf_counter()
            passed, what = run_tests(tree, m.tests, args.timeout)
            path.write_text(original)
            rows.append({"mutant": m.name, "file": m.file, "killed": not passed, "by": what,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{'killed  ' if not passed else 'SURVIVED'} {m.name}  [{what}]", flush=True)
    table = ["| mutant | file | outcome | failing test |", "|---|---|---|---|"]
    table += [f"| {r['mutant']} | `{r['file']}` | {'killed' if r['killed'] else '**survived**'} | {r['by']} |"
              for r in rows]
    print("\n" + "\n".join(table))
    killed = sum(r["killed"] for r in rows)
    print(f"\n{killed} of {len(rows)} mutants killed")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "killed": killed, "total": len(rows), "table": "\n".join(table)}, indent=2))
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
