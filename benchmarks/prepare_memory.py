"""Prepare-stage rate and peak memory on an image folder, at 1x and 3x its size.

Streams must keep memory flat as the folder grows: this runs the real prepare entry point
on the folder and on a 3x copy (symlinks under new names), each in a fresh process, and
prints images/s and the peak resident memory of the stage's process (RUSAGE_CHILDREN: the
largest of the processes it waited for).

    python benchmarks/prepare_memory.py [--data flowers128] [--folder PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from projects import as_project

REPO = Path(__file__).resolve().parents[1]


def run_prepare(workdir: Path, data: str, folder: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MiB of any process) for one prepare run in a fresh process."""
    code = (
        "import resource, subprocess, sys; "
        "r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    command = [sys.executable, str(REPO / "src/prepare.py"), f"data={data}", f"data.path={folder}", "hydra.run.dir=."]
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *command], cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"prepare failed:\n{out.stderr[-2000:]}")
    return seconds, int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="flowers128", help="data config (an image_folder source)")
    parser.add_argument(
        "--folder",
        type=Path,
        default=Path(os.environ.get("DCGAN_DATA_MIRROR", REPO.parent / "shared/datasets")) / "flowers_ccby/images",
    )
    args = parser.parse_args()
    images = sorted(p for p in args.folder.iterdir() if p.is_file())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for copies in (1, 3):
            folder = Path(tmp) / f"x{copies}"
            folder.mkdir()
            for copy in range(copies):
                for image in images:
                    (folder / f"{image.stem}-{copy}{image.suffix}").symlink_to(image)
            workdir = Path(tmp) / f"work{copies}"
            workdir.mkdir()
            as_project(workdir)
            seconds, peak = run_prepare(workdir, args.data, folder)
            results[copies] = (len(images) * copies, seconds, peak)
            print(
                f"{copies}x folder: {len(images) * copies} images in {seconds:.1f} s "
                f"({len(images) * copies / seconds:.0f} images/s incl. start-up), peak RSS {peak:.0f} MiB"
            )
    growth = results[3][2] / results[1][2]
    print(f"peak_rss_mib_1x={results[1][2]:.0f} peak_rss_mib_3x={results[3][2]:.0f} memory_growth_3x={growth:.2f}")


if __name__ == "__main__":
    main()
