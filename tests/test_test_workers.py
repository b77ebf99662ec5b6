"""`make test` runs the suite on pytest-xdist workers; several modules' tests build on each
other through a module fixture (tests/test_dvc_pipeline.py's project), so a module must stay
on one worker with the scheduling flags the Makefile passes."""

import re
import subprocess
import sys
from collections import defaultdict

from conftest import REPO


def test_make_tests_scheduling_keeps_each_module_on_one_worker(tmp_path):
    recipe = re.search(r"^test:.*\n(?:\t.*\n)*", (REPO / "Makefile").read_text(), re.M).group(0)
    flags = re.search(r"pytest (-n \S+ --dist \S+)", recipe).group(1).replace("$(TEST_WORKERS)", "2").split()
    for module in ("alpha", "beta"):
        tests = "".join(f"def test_{i}():\n    time.sleep(0.1)\n" for i in range(4))
        (tmp_path / f"test_{module}.py").write_text(f"import time\n\n{tests}")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *flags, "-v", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    workers = defaultdict(set)
    for worker, module in re.findall(r"^\[(gw\d+)\].*PASSED \S*?(test_\w+)\.py::", result.stdout, re.M):
        workers[module].add(worker)
    assert set(workers) == {"test_alpha", "test_beta"} and all(len(found) == 1 for found in workers.values()), dict(
        workers
    )
