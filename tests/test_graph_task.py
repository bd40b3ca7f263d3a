"""The generated graph-search task: graphs, chains, file format, grading, tokens, and `latent data generate`."""

import re
from collections import deque

import pytest

from latent_reasoning import tasks
from latent_reasoning.cli import main
from latent_reasoning.methods.base import chain_text
from latent_reasoning.tasks import DataError, Example
from latent_reasoning.tasks.graph import NAMES, Graph

SIZES = [  # (options, edges): a forest of 2 trees, or 3 when branches=0 leaves nodes over
    ({}, 14),
    ({"nodes": 8, "hops": 3, "branches": 0}, 6),
    ({"nodes": 12, "hops": 3, "branches": 0}, 9),
    ({"nodes": 24, "hops": 6, "branches": 2}, 22),
    ({"nodes": 13, "hops": 2, "branches": 3}, 11),
    ({"nodes": 40, "hops": 8, "branches": 1, "symbols": 200}, 38),
]


def parse_question(question: str) -> tuple[list[tuple[str, str]], str, list[str]]:
    """Edges, root and options read back from the question text alone."""
    facts, query = question.split(" . ")
    edges = [tuple(fact.split()) for fact in facts.removeprefix("| ").split(" | ")]
    root, *options = re.fullmatch(r"from (\w+) : (\w+) or (\w+) \?", query).groups()
    return edges, root, options


def reachable(edges, start: str) -> set[str]:
    children = {}
    for parent, child in edges:
        children.setdefault(parent, []).append(child)
    seen, queue = {start}, deque([start])
    while queue:
        for child in children.get(queue.popleft(), []):
            if child not in seen:
                seen.add(child)
                queue.append(child)
    return seen


def test_generation_is_deterministic_for_a_seed_and_distinct():
    task = Graph()
    first, again, other = task.generate(50, seed=3), task.generate(50, seed=3), task.generate(50, seed=4)
    assert first == again
    assert [e.question for e in first] != [e.question for e in other]
    assert len({e.question for e in first}) == 50
    excluded = {e.question for e in first[:10]}
    assert not excluded & {e.question for e in task.generate(50, seed=3, exclude=excluded)}


@pytest.mark.parametrize("options, edge_count", SIZES)
@pytest.mark.parametrize("chain", ["backward", "forward", "path"])
def test_the_answer_is_reachable_from_the_root_and_the_other_option_is_not(options, edge_count, chain):
    task = Graph(chain=chain, **options)
    for example in task.generate(200, seed=1):
        edges, root, options_asked = parse_question(example.question)
        names = {node for edge in edges for node in edge}
        assert len(edges) == edge_count and len(names) == task.nodes <= task.symbols
        assert set(names) <= set(NAMES[: task.symbols])
        children = [child for _, child in edges]
        assert len(children) == len(set(children)), "a node with two parents"
        assert len([child for parent, child in edges if parent == root]) == 1 + task.branches
        assert example.answer in options_asked and len(set(options_asked)) == 2
        other = next(option for option in options_asked if option != example.answer)
        from_root = reachable(edges, root)
        assert example.answer in from_root and other not in from_root
        assert example.meta == {"root": root, "options": options_asked, "hops": task.hops}
        assert len(example.steps) == task.hops


def test_min_hops_mixes_depths_and_each_problem_is_one_of_its_own_depth():
    task = Graph(nodes=8, hops=3, branches=0, symbols=16, chain="forward", min_hops=1)
    examples = task.generate(300, seed=2)
    assert examples == task.generate(300, seed=2)
    assert {e.meta["hops"] for e in examples} == {1, 2, 3}
    for example in examples:
        edges, root, options_asked = parse_question(example.question)
        assert len({node for edge in edges for node in edge}) == 8
        other = next(option for option in options_asked if option != example.answer)
        assert example.answer in reachable(edges, root) and other not in reachable(edges, root)
        assert len(example.steps) == example.meta["hops"]
        assert example.steps[0].split()[1] == root and example.steps[-1].split()[-1] == example.answer
    fixed = Graph(nodes=8, hops=3, branches=0, symbols=16, chain="forward")
    assert Graph(nodes=8, hops=3, branches=0, symbols=16, chain="forward", min_hops=3).generate(20, seed=2) == \
        fixed.generate(20, seed=2)  # min_hops = hops is the fixed-depth task, problem for problem


def test_both_chains_are_paths_of_the_graph():
    for chain in ("backward", "forward"):
        for example in Graph(chain=chain, nodes=20, hops=4, branches=2).generate(100, seed=5):
            edges, root, (first, _) = parse_question(example.question)
            walked = []
            for step in example.steps:
                node, word, next_node = step.removeprefix("- ").split()
                assert word == ("from" if chain == "backward" else "to")
                assert ((next_node, node) if chain == "backward" else (node, next_node)) in edges
                walked += [node, next_node]
            # consecutive steps share a node: the steps are one walk
            assert all(walked[i] == walked[i + 1] for i in range(1, len(walked) - 1, 2))
            if chain == "forward":
                assert walked[0] == root and walked[-1] == example.answer
            else:  # from the first option up to a top (a node without a parent)
                assert walked[0] == first and walked[-1] not in {child for _, child in edges}
                assert (walked[-1] == root) == (first == example.answer)


def test_a_path_names_the_nodes_of_the_forward_chain_one_a_step():
    forward = Graph(chain="forward", nodes=20, hops=4, branches=2).generate(50, seed=5)
    path = Graph(chain="path", nodes=20, hops=4, branches=2).generate(50, seed=5)
    for walked, named in zip(forward, path):
        assert walked.question == named.question and walked.answer == named.answer
        assert named.steps == [" " + step.split()[-1] for step in walked.steps]


def test_first_default_problem_matches_the_docstring():
    example = Graph().generate(1, seed=0)[0]
    assert example.question in tasks.graph.__doc__
    assert example.steps == ["- ra from boz", "- boz from baz", "- baz from bek"] and example.answer == "ra"
    assert Graph(chain="forward").generate(1, seed=0)[0].steps == ["- bek to baz", "- baz to boz", "- boz to ra"]
    path = Graph(chain="path")
    example = path.generate(1, seed=0)[0]
    assert example.steps == [" baz", " boz", " ra"]
    assert chain_text(example, path.step_separator) == " baz boz ra#### ra" and path.grade(" baz boz ra#### ra", example)


def test_save_then_load_gives_the_examples_back(tmp_path):
    for chain in ("backward", "forward", "path"):
        task = Graph(chain=chain, nodes=18, hops=4)
        examples = task.generate(40, seed=2)
        path = tmp_path / f"{chain}.txt"
        task.save(examples, path)
        assert task.load(path=path) == examples
        line = path.read_text().splitlines()[0]
        assert line == "||".join([examples[0].question, *examples[0].steps]) + f" #### {examples[0].answer}"


@pytest.mark.parametrize("bad, named", [
    ("| ba ke . from ba : ke or zu ?", "expected '<question>||<step>"),
    ("| ba ke . from ba : ke or zu ? #### ke", "expected '<question>||<step>"),
    ("ba ke . from ba : ke or zu ?||- ke from ba #### ke", "question"),
    ("| ba ke . from ba : ke or zu ?||ke from ba #### ke", "step 'ke from ba'"),
    ("| ba ke . from ba : ke or zu ?||- ke from ba #### vo", "neither option"),
    ("| ba k3 . from ba : k3 or zu ?||- k3 from ba #### k3", "question"),
])
def test_a_bad_line_raises_naming_file_and_line(tmp_path, bad, named):
    path = tmp_path / "graph.txt"
    Graph().save(Graph().generate(2, seed=0), path)
    path.write_text(path.read_text() + "\n" + bad + "\n")
    with pytest.raises(DataError) as raised:
        Graph().load(path=path)
    assert str(path) in str(raised.value) and "line 4" in str(raised.value)
    assert named in str(raised.value)
    assert len(Graph().load(path=path, skip_bad=True)) == 2


def test_grading_needs_exactly_the_answer_after_the_last_marker():
    example = Example("| ba ke | zu mo . from ba : ke or mo ?", ["- ke from ba"], "ke")
    task = Graph()
    for right in ["- ke from ba\n#### ke", "#### ke", "#### ke.", "#### mo\n#### ke", "#### ke\nmore text"]:
        assert task.grade(right, example), right
    for wrong in ["- ke from ba\n#### mo", "#### ke or mo", "#### mo ke", "ke", "", "####", "#### k", "#### kez",
                  "#### ke\n#### mo"]:
        assert not task.grade(wrong, example), wrong


def test_every_node_name_is_one_token_and_steps_use_the_question_tokens():
    from latent_reasoning.backbones import load_backbone
    from latent_reasoning.methods.base import chain_text, prompt_text

    examples = Graph(symbols=len(NAMES)).generate(50, seed=0)
    texts = [prompt_text(e) + chain_text(e) for e in examples] + [" ".join(NAMES)]
    _, tokenizer = load_backbone("tiny-5m", texts=texts)
    for name in NAMES:
        assert tokenizer.tokenize(f" {name}") == [f"▁{name}"], name
    for example, text in zip(examples, texts):
        pieces = tokenizer.tokenize(text)
        assert tokenizer.unk_token not in pieces
        # No name at the start of a line or of the text, where it would be another token.
        assert not set(pieces) & set(NAMES), text
        assert len(tokenizer.tokenize(example.steps[0])) == 4


@pytest.mark.parametrize("options, message", [
    ({"hops": 0}, "hops must be an integer of at least 1"),
    ({"branches": -1}, "branches must be an integer of at least 0"),
    ({"nodes": 9}, "nodes=9 is too few for hops=3 and branches=1: need at least"),
    ({"nodes": 9, "branches": 0}, "one node left over"),
    ({"chain": "sideways"}, "chain must be 'backward', 'forward' or 'path'"),
    ({"symbols": 10}, "symbols=10 must be at least nodes=16"),
    ({"symbols": 10_000}, "symbols=10000"),
    ({"nodes": "16"}, "nodes must be an integer"),
    ({"min_hops": 4}, "min_hops=4 is more than hops=3"),
    ({"min_hops": 0}, "min_hops must be an integer of at least 1"),
])
def test_bad_options_are_refused_naming_the_option(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Graph(**options)


def test_cli_generates_a_file_with_task_options(tmp_path, capsys):
    out = tmp_path / "graph.txt"
    assert main(["data", "generate", "graph", "--n", "30", "--seed", "7", "--out", str(out),
                 "--option", "hops=4", "--option", "task.nodes=20", "--option", "chain=forward"]) == 0
    task = tasks.get("graph", hops=4, nodes=20, chain="forward")
    assert task.load(path=out) == task.generate(30, seed=7)
    assert main(["data", "check", "graph", str(out)]) == 0
    assert "30 graph examples" in capsys.readouterr().out
    assert main(["data", "generate", "graph", "--n", "3", "--out", str(out), "--option", "hopz=4"]) == 2
    assert "hopz" in capsys.readouterr().err
    assert main(["data", "generate", "graph", "--n", "3", "--out", str(out), "--option", "hops=9"]) == 2
    assert "nodes=16 is too few" in capsys.readouterr().err
    # multiplication's --digits still works
    assert main(["data", "generate", "multiplication", "--digits", "2", "--n", "3", "--out", str(out)]) == 0
    assert all(len(e.question.split()) == 5 for e in tasks.get("multiplication", digits=2).load(path=out))
