"""A `cot` tiny model trained here on generated multiplication: the loss falls and it beats chance."""

from collections import Counter

from latent_reasoning import tasks
from latent_reasoning.run import make_run, train


def digit_accuracy(predicted: list[str | None], gold: list[str]) -> float:
    """Mean over answer positions of the fraction of examples whose digit there is right."""
    width = len(gold[0].split())
    hits = sum(
        p is not None and i < len(p.split()) and p.split()[i] == g.split()[i]
        for p, g in zip(predicted, gold) for i in range(width)
    )
    return hits / (width * len(gold))


def test_cot_learns_two_digit_multiplication_beyond_chance(tmp_path):
    task = tasks.get("multiplication", digits=2)
    train_file = tmp_path / "train.txt"
    train_examples = task.generate(3000, seed=0)
    task.save(train_examples, train_file)
    held_out = task.generate(200, seed=1, exclude={e.question for e in train_examples})
    run = make_run({"method": "cot", "task": "multiplication", "task_options": {"digits": 2}, "model": "tiny-5m",
                    "train_data": str(train_file), "steps": 200, "batch_size": 32, "lr": 1e-3, "warmup_steps": 20,
                    "save_every": 0, "eval_size": 0, "log_with": "none", "max_new_tokens": 30})
    method, history = train(run, tmp_path / "run")
    first = sum(r["loss"] for r in history[:10]) / 10
    last = sum(r["loss"] for r in history[-10:]) / 10
    assert last < 0.5 * first

    # chance: always answering the most frequent training digit at each answer position
    width = len(train_examples[0].answer.split())
    majority = " ".join(Counter(e.answer.split()[i] for e in train_examples).most_common(1)[0][0]
                        for i in range(width))
    gold = [e.answer for e in held_out]
    chance = digit_accuracy([majority] * len(gold), gold)
    learned = digit_accuracy([p.answer for p in method.answer(held_out)], gold)
    assert learned > chance + 0.05, (learned, chance)
