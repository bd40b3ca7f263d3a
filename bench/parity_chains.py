"""How a parity model's answers relate to its chain, from `latent eval` predictions (16-bit parity, running chain).

    python bench/parity_chains.py runs/latro-parity/latro-s0/held/predictions.jsonl [...]

Per file: exact (graded correct), chain right (the written running parities equal the true ones) and copied (the
parsed answer equals the chain's last parity).
"""

import json
import sys

for path in sys.argv[1:]:
    rows = [json.loads(line) for line in open(path)]
    chain_right = copied = exact = 0
    for row in rows:
        parity, running = 0, []
        for bit in row["question"].split():
            parity ^= int(bit)
            running.append(str(parity))
        chain = row["text"].split("####")[0].split()
        chain_right += chain == running
        copied += bool(chain) and row["answer"] == chain[-1]
        exact += row["correct"]
    n = len(rows)
    print(f"{path}: exact {exact / n:.3f}, chain right {chain_right / n:.3f}, copied {copied / n:.3f}")
