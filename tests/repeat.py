"""Run some tests N times and print how often each passed: the check that a test is not flaky.

    python tests/repeat.py -n 10 tests/test_fsdp2.py tests/test_vllm.py [-- extra pytest arguments]
    python tests/repeat.py -n 5 --keep runs/ ...   # each run's XML kept; a second call adds to the same table

Each repetition is a fresh `pytest` process (fixtures, servers and models start anew), its results read from the
JUnit XML pytest writes. The table lists every test seen, with passed / runs, and the first failure line of each
test that failed. Exit code 1 when any test did not pass every time. `make test-repeat` runs it on the multi-process,
server and vLLM tests.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def results(junit: Path) -> dict[str, tuple[str, str]]:
    """test id -> (outcome, first line of its failure) from one pytest run's JUnit XML."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                detail = (node.get("message") or "").splitlines()[0][:120] if node.get("message") else ""
                break
        out[test_id] = (outcome, detail)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="how many times (default 5)")
    parser.add_argument(
        "--keep",
        type=Path,
        help="folder for each run's JUnit XML; runs already there count in the table, so an interrupted "
        "repetition can go on where it stopped (one folder per commit)",
    )
    parser.add_argument("paths", nargs="+", help="test files or ids; after `--`, arguments for pytest")
    args = parser.parse_args()
    paths, extra = args.paths, []
    if "--" in paths:
        at = paths.index("--")
        paths, extra = paths[:at], paths[at + 1 :]

    seen: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.keep:
            folder = args.keep
            folder.mkdir(parents=True, exist_ok=True)
        earlier = sorted(folder.glob("run*.xml"), key=lambda p: int(p.stem[3:]))
        for junit in earlier:
            for test_id, result in results(junit).items():
                seen[test_id].append(result)
        if earlier:
            print(f"repeat: {len(earlier)} earlier runs in {folder}", flush=True)
        total = len(earlier) + args.n
        for i in range(len(earlier) + 1, total + 1):
            junit = folder / f"run{i}.xml"
            start = time.monotonic()
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
            proc = subprocess.run([*cmd, *paths, *extra])
            if not junit.exists():  # pytest died before writing it: the run still counts, with no test passed
                junit.write_text("<testsuite/>")
            run = results(junit)
            for test_id, result in run.items():
                seen[test_id].append(result)
            passed = sum(outcome == "passed" for outcome, _ in run.values())
            print(
                f"repeat: run {i}/{total}: exit {proc.returncode}, {passed}/{len(run)} passed in "
                f"{time.monotonic() - start:.0f} s",
                flush=True,
            )

    width = max((len(t) for t in seen), default=10)
    print(f"\n{'test':<{width}}  passed/runs  first failure")
    flaky = False
    for test_id, runs in sorted(seen.items()):
        counted = [r for r in runs if r[0] != "skipped"]
        passed = sum(outcome == "passed" for outcome, _ in counted)
        failure = next((detail for outcome, detail in counted if outcome != "passed"), "")
        label = f"{passed}/{len(counted)}" if counted else "skipped"
        flaky |= bool(counted) and (passed < total)
        print(f"{test_id:<{width}}  {label:>11}  {failure}")
    return 1 if flaky or not seen else 0


if __name__ == "__main__":
    sys.exit(main())
