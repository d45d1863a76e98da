"""Peak memory of `cnnvis run` on the demo's test split (600 images) against its training split (6000):
memory must stay bounded by the batch size, not grow with the test set.

    python benchmarks/memory_bound.py [--repeats 2]

Each run is a fresh process that reports its own peak resident memory when it ends.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys
from cnnvis_cli.cli import main
code = main(['run', 'dataset.split={split}', 'progress=false', 'hydra.run.dir={folder}'])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
sys.exit(code)
"""


def measure(split: str) -> tuple[float, dict]:
    """Peak resident MB of one run of `split`, and its summary."""
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        output = subprocess.run([sys.executable, "-c", CHILD.format(split=split, folder=run)], check=True,
                                capture_output=True, text=True)
        return float(output.stdout.split()[-1]), json.loads((run / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print("| run | samples | selected | inference s | peak resident MB |")
    print("|---|---|---|---|---|")
    for repeat in range(1, args.repeats + 1):
        for split in ("test", "train"):
            peak, summary = measure(split)
            print(f"| {split} split, repeat {repeat} | {summary['samples']} | {summary['selection']['selected']} | "
                  f"{summary['seconds']['inference']} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
