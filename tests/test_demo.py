"""`latent demo --quick`: the main job end to end, offline, writing its table and plot."""

import json

import pytest

from latent_reasoning.cli import main
from latent_reasoning.demo import DEMOS


@pytest.mark.parametrize("task", ["parity", "multiplication"])
def test_quick_demo_writes_a_row_per_method_a_table_and_a_plot(tmp_path, capsys, task):
    assert main(["demo", "--quick", "--task", task, "--out", str(tmp_path)]) == 0
    methods = DEMOS[task]["methods"]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [row["method"] for row in rows] == [label for label, *_ in methods]
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and row["forward_passes"] >= 1 and row["n"] == 40
    by_method = {row["method"]: row for row in rows}
    # self-consistency samples 5 answers: it costs more than greedy cot on the same model
    assert by_method["cot-sc"]["forward_passes"] > 2 * by_method["cot"]["forward_passes"]
    table = (tmp_path / "results.md").read_text()
    assert all(label in table for label, *_ in methods)
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| method | accuracy |" in capsys.readouterr().out
