"""`make bench` as people run it: benchmarks/throughput.py from the repository root on the
release recipe, shrunk to 2 nets and 16 sequences per timed epoch. Every row the release
recipe allows must time (the fixed-data rows once failed on the recipe's per-task
curricula, the stream rows on the population's init), and the projection must use the
learnability file's mean epochs and the release recipe's sequence shape."""

import json
import re
import subprocess
import sys
from pathlib import Path

from mlds_jax.config.load import load_config

REPO = Path(__file__).resolve().parents[1]


def test_make_bench_times_every_row_and_projects_from_the_learnability_file():
    learnability = "benchmarks/learnability-ds1.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--slots", "2", "--epoch-sequences", "16",
         "--repeats", "1", "--no-torch", "--learnability", learnability],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "failed" not in proc.stdout, proc.stdout
    for row in ("jax M=2 cpu-kernel:", "jax M=2 xla:", "jax M=2 cpu-kernel stream:"):
        assert row in proc.stdout, proc.stdout
    means = json.loads((REPO / learnability).read_text())["mean_epochs"]
    recipe = load_config("ds1").recipe
    mean = sum(means.values()) / len(means)
    shape = (f"{mean:.0f} epochs x {recipe.train_sequences} sequences x "
             f"{recipe.train_length} steps per net")
    assert re.search(r"all 50,000 DS1 nets at the best rate \(jax M=2 cpu-kernel stream, "
                     + re.escape(shape), proc.stdout), proc.stdout
