"""How much each continuous thought changes from the previous one, from `latent inspect` output.

    latent inspect --checkpoint runs/bench-4x4/multiplication-slr-seed0/checkpoint --limit 200 ... > slr.txt
    python bench/thought_changes.py slr.txt

Per thought index t >= 1: min / median / max over the inspected questions of the relative change
||h_t - h_{t-1}|| / ||h_{t-1}||, the quantity slr's delta halting compares with `halt_threshold`.
"""

import re
import statistics
import sys
from collections import defaultdict

THOUGHT_LINE = re.compile(r"thought (\d+): \|x\| [\d.]+, change ([\d.]+)")

if __name__ == "__main__":
    for path in sys.argv[1:]:
        changes = defaultdict(list)
        for index, change in THOUGHT_LINE.findall(open(path).read()):
            changes[int(index)].append(float(change))
        for index, values in sorted(changes.items()):
            print(f"{path} thought {index} ({len(values)} questions): relative change min {min(values):.3f}, "
                  f"median {statistics.median(values):.3f}, max {max(values):.3f}")
