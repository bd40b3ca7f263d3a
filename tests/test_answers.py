"""The shared answer parser and graders on messy, realistic model outputs, right and wrong."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from latent_reasoning.tasks.answers import (
    extract_final,
    match_bool,
    match_choice,
    match_digits,
    match_entity,
    match_math,
    match_number,
)


@pytest.mark.parametrize(
    "text, span",
    [
        ("Janet sells 9 eggs.\n#### 18", "18"),
        ("So the answer is 18.", "18"),
        ("The final answer is $18.00. Next question: ...", "$18.00"),
        ("**Answer:** (C)\nExplanation follows.", "(C)"),
        ("Answer:\n(B)", "(B)"),
        (r"Thus $x = \boxed{\frac{1}{\sqrt{2}}}$.", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{5} is wrong; the answer is 6", "6"),
        (r"The answer is 4. Check: $\boxed{3}$", "3"),
        (r"$\boxed{11,\! 111,\! 100}$", r"11,\! 111,\! 100"),
        (r"The answer is 11,\! 111.", r"11,\! 111"),
        (r"\boxed{\frac{1}{2", r"\frac{1}{2"),  # cut off mid-box: the rest
        ("#### 1 2 #### 5 5 6", "5 5 6"),
        ("The answer is", ""),
        ("She makes 18 dollars a day.", None),
        ("We may check our answer: 17 * 44 = 748, so our answer is correct.", None),
    ],
)
def test_extract_final(text, span):
    assert extract_final(text) == span


@pytest.mark.parametrize(
    "text, gold, right",
    [
        ("#### 1,234", "1234", True),
        ("The answer is $18.00.", "18", True),
        ("so she makes 18 dollars", "18", True),
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18", True),
        ("The answer is 9 * 2 = 18.", "18", True),
        ("The answer is 18 eggs, 2 dollars each.", "18", True),
        ("The answer is **18**.", "18", True),
        ("The answer is: -5", "-5", True),
        ("The answer is \u22125", "-5", True),
        ("The answer is 3/4 of the pizza.", "0.75", True),
        ("The answer is 50%.", "50", True),
        (r"\boxed{\frac{1}{2}}", "0.5", True),
        ("The answer is 1,080 apples", "1080", True),
        ("The answer is 17", "18", False),
        ("The answer is 18.5", "18", False),
        ("18.5", "18", False),
        ("The answer is 5", "-5", False),
        ("He had 18 apples, then ate some. The answer is eighteen.", "18", False),
        ("The answer is", "18", False),
        ("I do not know.", "18", False),
        ("So she makes 18 dollars. In 2 days she makes 36.", "18", False),
        ("The answer is 70000 because 3 + 4 = 7.", "70000", True),
        ("The answer is 70000 because 3 + 4 = 7.", "7", False),
        ("The answer is 18 or 19.", "18", False),
        ("The answer is 18 or 19.", "19", False),
        ("The answer is between 18 and 19.", "18", False),
        ("It is between 18 and 19 dollars.", "19", False),
        ("#### 18 (rounded down)", "18", True),
    ],
)
def test_match_number(text, gold, right):
    assert match_number(text, gold) is right


@pytest.mark.parametrize(
    "text, gold, right",
    [
        (r"\boxed{\frac{1}{2}}", "0.5", True),
        (r"\boxed{\frac{1}{2}}", r"\frac12", True),
        (r"\boxed{0.5}", r"\frac{1}{2}", True),
        (r"\boxed{\frac{1}{3}}", r"\frac12", False),
        (
            r"So $r=3$ and the point is $\boxed{\left( 3, \frac{\pi}{2} \right)}.$",
            r"\left( 3, \frac{\pi}{2} \right)",
            True,
        ),
        (r"The answer is $(3, \frac{\pi}{2})$.", r"\left( 3, \frac{\pi}{2} \right)", True),
        (r"\boxed{(3, \pi)}", r"\left( 3, \frac{\pi}{2} \right)", False),
        (r"\boxed{\left( \frac{\pi}{2}, 3 \right)}", r"\left( 3, \frac{\pi}{2} \right)", False),
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", True),
        (r"\boxed{[2, 5)}", "[2,5)", True),
        (r"\boxed{(2, 5)}", "[2,5)", False),
        (r"\boxed{\$32,\!348}", r"\$32,\!348", True),
        (r"The final answer is \frac{3}{4}", r"\frac{3}{4}", True),
        (r"\boxed{44}. We check our answer: it is correct.", "44", True),
        (r"We find $x = 5$ at the end.", "5", True),
    ],
)
def test_match_math(text, gold, right):
    assert match_math(text, gold) is right


def test_math_grading_works_off_the_main_thread():
    """math-verify's signal timeouts cannot run in a worker thread; the graders must still work there."""
    texts = [r"\boxed{0.5}", r"\boxed{1/3}", "#### 18"]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda text: match_math(text, r"\frac12") or match_number(text, "18"), texts))
    assert results == [True, False, True]


DATES = {
    "A": "12/11/1937",
    "B": "12/25/1937",
    "C": "01/04/1938",
    "D": "12/04/1937",
    "E": "12/25/2006",
    "F": "07/25/1937",
}


@pytest.mark.parametrize(
    "text, gold, options, right",
    [
        ("Answer: (C)", "C", None, True),
        ("Answer: (c)", "C", None, True),
        ("A is wrong, the answer is (B)", "B", None, True),
        ("A is wrong, the answer is (B)", "A", None, False),
        ("The answer is B.", "B", None, True),
        ("The answer is B because A and C are too small.", "B", None, True),
        ("ANSWER:B", "(B)", None, True),
        (r"\boxed{C}", "C", None, True),
        ("B)", "B", None, True),
        ("C", "C", None, True),
        ("A dog is a mammal, so a cat is a pet too.", "A", None, False),
        ("It is a warm day and a bird sings.", "A", None, False),
        ("The answer is a trick question.", "A", None, False),
        ("Options (A) and (C) fail; (B) fits.", "B", None, True),
        ("Profit = 500 * 0.25 = 125\nAnswer D", "D", None, True),
        ("So 40 sales\nD is the correct choice", "D", None, True),
        ("The answer is 12/25/1937.", "B", DATES, True),
        ("Tomorrow is Christmas Day.\nSo tomorrow is 12/25/1937.", "B", DATES, True),
        ("The answer is 12/25/2006.", "B", DATES, False),
        ("The answer is (B) 12/25/1937.", "B", DATES, True),
        ("The answer is (G).", "G", DATES, False),
        ("A date is a thing.", "A", DATES, False),
    ],
)
def test_match_choice(text, gold, options, right):
    assert match_choice(text, gold, options) is right


@pytest.mark.parametrize(
    "text, gold, right",
    [
        ("The answer is False.", False, True),
        ("The answer is False.", True, False),
        ("Yes", True, True),
        ("yes.", False, False),
        ("#### True", True, True),
        ("Answer: no, frost is rare then.", False, True),
        ("Frost is not common there. No wait, in December it is. So yes", True, True),
        ("So the answer is yes, not no.", True, True),
        ("I cannot tell.", True, False),
        ("I cannot tell.", False, False),
        ("The answer is not True.", True, False),
        ("The answer is not True.", False, False),
        ("#### True or False", True, False),
        ("#### True or False", False, False),
        ("Alex is happy. So true", True, True),
    ],
)
def test_match_bool(text, gold, right):
    assert match_bool(text, gold) is right


@pytest.mark.parametrize(
    "text, right",
    [
        ("So Tom is a lempus.", True),
        ("Tom is a lempus.", True),
        ("Tom is a terpus. Every terpus is a brimpus. Every brimpus is a lempus.\n#### Tom is a lempus.", True),
        ("#### Tom is a lempus", True),
        ("The answer is Tom is an lempus.", True),
        ("lempus", False),  # COCONUT's criterion: the answer sentence, person and category
        ("Tom is a scrompus.", False),
        ("Bob is a lempus.", False),
        ("#### Tom is not a lempus.", False),
        ("#### Tom is a lempus or scrompus.", False),
        ("#### Every terpus is a lempus.", False),
        ("Every terpus is a lempus. So Tom is a scrompus.", False),
        ("#### Tom is a scrompus. Tom is a lempus.", False),
        ("", False),
    ],
)
def test_match_entity(text, right):
    assert match_entity(text, "Tom is a lempus.") is right


def test_match_entity_with_an():
    assert match_entity("Alex is an impus.", "Alex is an impus.")
    assert not match_entity("Alex is an impus.", "Alex is a wumpus.")


@pytest.mark.parametrize(
    "text, right",
    [
        ("5 5 5 6 1 + 0 0 6 4 9 0 ( 5 5 1 1 1 1 ) #### 5 5 6 0 8 2 0 1", True),
        ("####  5 5 6 0 8 2 0 1 \n3 4 * 1 2", True),
        ("#### 5 5 6 0 8 2 0 2", False),
        ("#### 5 5 6 0 8 2 0", False),
        ("5 5 6 0 8 2 0 1", True),  # the whole text is the answer
        ("The answer is 5 5 6 0 8 2 0 1.", True),
        ("The answer is 10280655", True),
        ("#### 10,280,655.", True),
        ("10280655", True),
        ("The answer is 10280656", False),
        ("#### 5 5 6 0 8 2 0 1 or 5 5 6 0 8 2 0 2", False),
        ("#### 5 5 6 0 8 2 0 1 0", False),
        ("The answer is 55608201", False),  # reversed digits are not the product as an integer
        ("3 4 * 1 2 5 5 6 0 8 2 0 1", False),
    ],
)
def test_match_digits(text, right):
    assert match_digits(text, "5 5 6 0 8 2 0 1") is right
