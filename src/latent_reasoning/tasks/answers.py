"""Final answers out of free model output, and one grader per kind of gold answer.

`extract_final` finds the final-answer span: the text after the last answer marker ("####",
"The answer is", "Answer:") up to the end of that sentence or line, or the contents of the last
`\\boxed{...}`. Every `match_*` grader starts from that span and compares it with a gold answer of
one kind: a number, a LaTeX expression, a choice letter, a yes/no, a ProsQA entity, iCoT digits.
When a text has no marker each grader falls back to a rule stated in its docstring (the last
sentence, the last choice token, ...). A text with a marker but no usable answer after it is wrong.
The span must give one answer: a hedge ("18 or 19"), a negation ("not True") or both options is wrong.

Numbers and LaTeX are compared by math-verify, imported on first use (it pulls in sympy). Its
timeouts rely on SIGALRM, which only works on the main thread, so elsewhere they are switched off.
"""

from __future__ import annotations

import re
import threading

_MARKER = re.compile(
    r"####"
    r"|(?i:(?:^|\bthe\s+(?:\w+\s+)?)answer\s+is\b)"  # "The answer is", "the final answer is", a line "Answer is"
    r"|\b(?:Answer|ANSWER|(?i:final answer))\s*:"  # "Answer:", "Final answer:", not "check our answer:"
    r"|\\boxed\s*\{",
    re.MULTILINE,
)
_SENTENCE_END = re.compile(r"(?<!\\)[.!?](?=\s)")  # not LaTeX's "\!" thin space

# A plain number ("1,234.5", ".5", "3/4", "50%", "-2") or a LaTeX fraction ("\frac{1}{2}", "\dfrac12").
_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_NUMBER = re.compile(
    r"\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}|\\[dt]?frac\d\d"
    rf"|(?:(?<![\w.])[-\u2212])?{_UNSIGNED}(?:\s*/\s*{_UNSIGNED})?(?:\s*\\?%)?"
)

_DEFAULT_LETTERS = "ABCDEFGH"
# Choice tokens in prose: "(B)", "B)", "answer B", "option (B)", "choice B", "B is the correct answer".
_CHOICE_IN_PROSE = re.compile(
    r"\(([A-Z])\)|(?<![A-Za-z])([A-Z])\)|(?i:\b(?:answer|option|choice))\s+\(?([A-Z])\b"
    r"|\b([A-Z]) is (?i:the (?:correct |right )?(?:answer|choice|option))"
)
_CHOICE_AT_END = re.compile(r"(?<![A-Za-z'])([A-Z])[.)!]*\s*$")
_BOOL = re.compile(r"\b(true|false|yes|no)\b", re.IGNORECASE)
# Words that may open an answer sentence without changing it: "So Tom is a lempus.", "Thus, yes".
_CONNECTIVE = r"(?:(?:so|thus|therefore|hence)\b,?\s*)?"
_LEADING_BOOL = re.compile(rf"{_CONNECTIVE}(true|false|yes|no)\b(.*)", re.IGNORECASE | re.DOTALL)
_ENTITY_SENTENCE = re.compile(rf"{_CONNECTIVE}([A-Z][\w-]*) is an? ([A-Za-z][\w-]*)", re.IGNORECASE)
# Where an explanation starts after the answer: "70000 because 3 + 4 = 7", "18 eggs, 2 dollars each".
_EXPLANATION = re.compile(r",\s|;|\(|\b(?:because|since|as|so|given|which|from|for|when|if)\b", re.IGNORECASE)


def extract_final(text: str) -> str | None:
    """The final-answer span of free model output, or None when the text has no answer marker.

    The last marker wins. After "####", "the [final] answer is" or "Answer:" the span runs to the end of
    that sentence or line (leading colons/markdown stars and a trailing period are dropped); for
    `\\boxed{...}` it is the braces' contents (nested braces allowed, an unclosed box runs to the end).
    """
    markers = list(_MARKER.finditer(text))
    if not markers:
        return None
    last = markers[-1]
    if last.group().startswith("\\"):
        return _braced(text, last.end()).strip()
    rest = text[last.end() :].lstrip(" \t\r\n:*")
    span = _SENTENCE_END.split(rest.split("\n", 1)[0], 1)[0]
    return span.strip(" \t*").rstrip(".").strip(" \t*")


def _braced(text: str, start: int) -> str:
    """The text from `start` up to the brace that closes the one just before `start`."""
    depth = 1
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[start:position]
    return text[start:]


# ---- numbers and LaTeX (math-verify) ---------------------------------------------------------------


def _timeout() -> int | None:
    """math-verify's SIGALRM timeouts only work on the main thread; elsewhere run without them."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse(expression: str) -> list:
    from math_verify import parse

    return parse(expression, parsing_timeout=_timeout())


def _verify(gold: list, predicted: list) -> bool:
    from math_verify import verify

    return bool(gold) and bool(predicted) and verify(gold, predicted, timeout_seconds=_timeout())


def _parse_number(token: str) -> list:
    token = token.replace("\u2212", "-").replace(",", "").replace("\\%", "%")
    return _parse(f"${token}$" if token.startswith("\\") else token)


def match_number(text: str, gold: str) -> bool:
    """True when the number answered in `text` equals `gold` (a plain number such as "18" or "-0.5").

    The answer is the final span, or without a marker the last sentence holding a number. Its claim
    runs from the start to where an explanation begins ("because", "since", ", ", "(", ...), so
    "70000 because 3 + 4 = 7" answers 70000; a claim that is an equation answers the value after its
    last "=" ("9 * 2 = 18" answers 18). The claim must name exactly one number: a hedge ("18 or 19",
    "between 18 and 19") is wrong. Commas, "$", units and other words are ignored; fractions ("3/4",
    "\\frac{3}{4}") and percents ("50%" equals 50 or 0.5) are compared by value.
    """
    span = extract_final(text)
    if span is None:
        span = _last_sentence(text, containing=_NUMBER)
    numbers = _claimed_numbers(span)
    return len(numbers) == 1 and _verify(_parse_number(gold.strip()), _parse_number(numbers[0]))


def _claimed_numbers(span: str) -> list[str]:
    """The numbers of the span's claim: after its last "=", before any explanation that follows the first number."""
    first = _NUMBER.search(span)
    if first is None:
        return []
    explanation = _EXPLANATION.search(span, first.end())
    claim = span[: explanation.start()] if explanation else span
    return _NUMBER.findall(claim.rsplit("=", 1)[-1])


def _last_sentence(text: str, containing: re.Pattern | None = None) -> str:
    """The last sentence or line of `text` (the last one matching `containing`, if given), without its end mark."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n", text.strip()) if s.strip()]
    if containing is not None:
        sentences = [s for s in sentences if containing.search(s)]
    return sentences[-1].strip().rstrip(".!?").strip() if sentences else ""


def _parse_latex(expression: str) -> list:
    """Parse text that has its own math delimiters as it is, bare LaTeX as if it were boxed."""
    if re.search(r"(?<!\\)\$|\\\(|\\\[", expression):
        return _parse(expression)
    return _parse(f"\\boxed{{{expression}}}")


def match_math(text: str, gold_latex: str) -> bool:
    """True when the final answer in `text` is mathematically equal to `gold_latex` (a MATH answer
    string without dollars, e.g. "\\left( 3, \\frac{\\pi}{2} \\right)").

    The answer is the last `\\boxed{}` or the span after the last marker; without a marker,
    math-verify picks the answer out of the whole text itself.
    """
    span = extract_final(text)
    predicted = _parse(text) if span is None else _parse_latex(span)
    return _verify(_parse_latex(gold_latex), predicted)


# ---- choices, booleans, entities, digits ------------------------------------------------------------


def match_choice(text: str, gold_letter: str, options: dict[str, str] | None = None) -> bool:
    """True when `text` picks the choice `gold_letter` ("B" or "(B)").

    In the final span: the first "(B)"/"(b)", else a span that is just a letter ("B", "c."), else the
    first standalone capital letter ("B)", "B.", "B because ..."), else the option's own text when
    `options` ({letter: text}) is given and exactly one option text is named. Without a marker: the
    last "(B)", "B)", "answer/option/choice B", or a capital letter ending the text; else the option
    text on the last line. Only letters of `options` (default A-H) count, and a lowercase "a" in prose
    never does.
    """
    letters = [letter.upper() for letter in options] if options else list(_DEFAULT_LETTERS)
    span = extract_final(text)
    if span is None:
        picked = _last_choice_in_prose(text, letters)
        last_line = text.strip().rsplit("\n", 1)[-1]
    else:
        picked = _choice_in_span(span, letters)
        last_line = span
    if picked is None and options:
        picked = _option_named(last_line, options)
    return picked is not None and picked == gold_letter.strip().strip("()").upper()


def _choice_in_span(span: str, letters: list[str]) -> str | None:
    for match in re.finditer(r"\(([A-Za-z])\)", span):
        if match.group(1).upper() in letters:
            return match.group(1).upper()
    bare = re.sub(r"\\text\{|[\s(){}.:*$]", "", span)
    if len(bare) == 1 and bare.upper() in letters:
        return bare.upper()
    for match in re.finditer(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])", span):
        if match.group(1) in letters:
            return match.group(1)
    return None


def _last_choice_in_prose(text: str, letters: list[str]) -> str | None:
    found = [
        (match.start(), letter) for match in _CHOICE_IN_PROSE.finditer(text) for letter in match.groups() if letter
    ]
    found += [(match.start(), match.group(1)) for match in _CHOICE_AT_END.finditer(text)]
    found = [(position, letter) for position, letter in found if letter in letters]
    return max(found)[1] if found else None


def _normalise_option(text: str) -> str:
    return " ".join(text.lower().replace("$", "").split()).rstrip(".")


def _option_named(text: str, options: dict[str, str]) -> str | None:
    """The letter whose option text `text` is, or names exactly once among all options."""
    said = _normalise_option(text)
    if not said:
        return None
    for letter, option in options.items():
        if said == _normalise_option(option):
            return letter.upper()
    named = [
        letter.upper()
        for letter, option in options.items()
        if _normalise_option(option) and re.search(rf"(?<![\w.]){re.escape(_normalise_option(option))}(?![\w])", said)
    ]
    return named[0] if len(named) == 1 else None


def match_bool(text: str, gold: bool) -> bool:
    """True when `text` answers `gold`: the final span (without a marker, the last sentence) starts with
    True/False/Yes/No, after an optional "So"/"Thus"/"Therefore", and never names the other answer
    except as "not X" ("yes, not no" is yes). Wrong: "not True", "True or False". Case-insensitive."""
    span = extract_final(text)
    if span is None:
        span = _last_sentence(text)
    leading = _LEADING_BOOL.fullmatch(span.strip())
    if leading is None:
        return False
    answer = leading.group(1).lower() in ("true", "yes")
    rest = leading.group(2)
    for other in _BOOL.finditer(rest):
        negated = re.search(r"\bnot\s+$", rest[: other.start()], re.IGNORECASE)
        if (other.group(1).lower() in ("true", "yes")) != answer and not negated:
            return False
    return answer == gold


def _entity(sentence: str) -> tuple[str, str] | None:
    """(person, category) of an answer sentence "Tom is a lempus" (after an optional "So"), lowercased."""
    match = _ENTITY_SENTENCE.fullmatch(sentence.strip().rstrip(".").strip())
    return (match.group(1).lower(), match.group(2).lower()) if match else None


def match_entity(text: str, gold: str) -> bool:
    """True when `text` answers the ProsQA gold sentence `gold` ("Tom is a lempus."), COCONUT's criterion:
    the final span, or without a marker the last sentence, is "<person> is a(n) <category>" (an optional
    "So"/"Thus" before it) with the gold person and category. Wrong: another person or category, "Tom is
    not a lempus", "Tom is a lempus or scrompus", a fact about a concept ("Every terpus is a lempus")."""
    span = extract_final(text)
    if span is None:
        span = _last_sentence(text)
    answered = _entity(span)
    return answered is not None and answered == _entity(gold)


def match_digits(text: str, gold: str) -> bool:
    """True when `text` answers the iCoT product `gold` (digits least-significant first, "5 5 6 0 8 2 0 1").

    The answer is the final span ("#### ...", "The answer is ..."), or without a marker the whole text.
    Written as iCoT digits it must be exactly the gold digits; written as one ordinary integer
    ("10280655", "10,280,655") it must be the product. A trailing period is allowed; anything else
    in the span (a second number, words) makes it wrong.
    """
    span = extract_final(text)
    if span is None:
        span = text.strip().rstrip(".").strip()
    tokens = span.split()
    if len(tokens) > 1:
        return tokens == gold.split()
    integer = span.replace(",", "")
    return integer.isdigit() and int(integer) == int("".join(reversed(gold.split())))
