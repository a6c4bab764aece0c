"""prism_train data, mixes, tokenizer and rewards."""

import itertools
import json
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prism_analysis.errors import PrismError
from prism_train.data import REASONING_DOMAINS, documents, in_split
from prism_train.data import problem_stream as problems
from prism_train.data.mix import PRESETS, load_mix
from prism_train.rewards import extract_answer, reward


@pytest.mark.parametrize("domain", REASONING_DOMAINS)
def test_problems_are_deterministic_and_splits_never_overlap(domain):
    a = [p.question for p in itertools.islice(problems(domain, "train", seed=3), 300)]
    b = [p.question for p in itertools.islice(problems(domain, "train", seed=3), 300)]
    assert a == b
    train = {p.question for p in itertools.islice(problems(domain, "train", seed=0), 3000)}
    evals = {p.question for p in itertools.islice(problems(domain, "eval", seed=0), 300)}
    assert train and evals and not (train & evals)
    assert all(in_split(q, "eval") for q in evals) and not any(in_split(q, "eval") for q in train)


@pytest.mark.parametrize("domain", ["general", "code"])
def test_corpus_documents_split(domain):
    tr = set(itertools.islice(documents(domain, "train"), 500))
    ev = set(itertools.islice(documents(domain, "eval"), 100))
    assert tr and ev and not (tr & ev)


def test_math_answers_follow_from_the_worked_solution():
    for p in itertools.islice(problems("math", "train", seed=1), 300):
        value = None
        for line in p.reasoning.splitlines():
            lhs, rhs = line.split(" = ")
            x, op, y = lhs.split()
            assert int(rhs) == {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op]
            assert value is None or int(x) == value
            value = int(rhs)
        assert str(value) == p.answer
        assert p.text == f"Question: {p.question}\n<think>\n{p.reasoning}\n</think>\nAnswer: {p.answer}"


def test_code_answers_match_the_program_run_by_the_test():
    import contextlib
    import io

    for p in itertools.islice(problems("code_reasoning", "train", seed=2), 200):
        program = p.question.split("\n", 1)[1]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(program, {})  # the generator's own program, never model output
        assert buf.getvalue().strip() == p.answer


# standard atomic masses, rounded to integers (independent of the generator's own table)
ATOMIC_MASS = {"H": 1, "C": 12, "N": 14, "O": 16, "Na": 23, "Mg": 24, "S": 32, "Ca": 40}


def science_answer(question: str) -> int:
    """The answer of a science problem, computed by the test from the question's text alone."""
    import re

    nums = [int(x) for x in re.findall(r"(?<![A-Za-z])\d+", question)]
    if "resistor" in question:  # V = I R
        r, i = nums
        return i * r
    if "volts" in question and "amperes" in question:  # P = V I
        v, i = nums
        return v * i
    if "meters per second" in question:  # d = v t
        v, t = nums
        return v * t
    if "density" in question:  # rho = m / V
        m, vol = nums
        assert m % vol == 0
        return m // vol
    if "molar mass" in question:
        formula = question.split("molar mass of ")[1].split(" ")[0]
        stated = dict(re.findall(r"([A-Z][a-z]?) = (\d+)", question))
        assert all(ATOMIC_MASS[e] == int(m) for e, m in stated.items()), "the question states true masses"
        return sum(ATOMIC_MASS[e] * int(n or 1) for e, n in re.findall(r"([A-Z][a-z]?)(\d*)", formula))
    raise AssertionError(f"unknown science template: {question}")


def test_science_answers_follow_from_the_question():
    seen = set()
    for p in itertools.islice(problems("science", "train", seed=4), 300):
        assert int(p.answer) == science_answer(p.question), p.question
        seen.add(p.question.split()[1])
    assert len(seen) >= 5, "every template was drawn"


def test_presets_and_mix_files(tmp):
    assert set(PRESETS) >= {"pretrain", "math", "math_code", "math_code_science"}
    assert load_mix("mcs").name == "math_code_science" and load_mix("mc").name == "math_code"
    pre = load_mix("pretrain").domains
    # a small stated share of reasoning text (5 %), and the sampler gives it that share of characters
    assert sum(pre.get(d, 0) for d in REASONING_DOMAINS) / sum(pre.values()) == pytest.approx(0.05)
    draw, rng = load_mix("pretrain").sampler("train"), random.Random(1)
    docs = [draw(rng) for _ in range(4000)]
    reasoning = sum(len(d) for d in docs if d.startswith("Question: ")) / sum(len(d) for d in docs)
    assert 0.035 < reasoning < 0.065
    (tmp / "corpus.jsonl").write_text("\n".join(json.dumps({"text": f"my document number {i}"}) for i in range(60)))
    (tmp / "mix.yaml").write_text(
        "name: mine\ndomains: {math: 1, general: 0.5}\nsources:\n  - {path: corpus.jsonl, weight: 2}\n"
    )
    mix = load_mix(str(tmp / "mix.yaml"))
    sample = mix.sampler("train")

    rng = random.Random(0)
    docs = [sample(rng) for _ in range(300)]
    assert any(d.startswith("my document") for d in docs) and any(d.startswith("Question:") for d in docs)


def test_mix_weights_are_text_shares():
    """Prose documents are ~10x longer than problems; weights 1:1 must still give ~half the text each
    (drawing documents with probability = weight gave prose most of the tokens)."""

    from prism_train.data.mix import Mix

    sample = Mix("half", {"general": 1.0, "math": 1.0}).sampler("train")
    rng = random.Random(1)
    chars = {"problem": 0, "prose": 0}
    for _ in range(4000):
        d = sample(rng)
        chars["problem" if d.startswith("Question:") else "prose"] += len(d)
    assert chars["prose"] / sum(chars.values()) == pytest.approx(0.5, abs=0.08)


@pytest.mark.parametrize(
    "content,problem",
    [
        ("domains: {math: 1\n", "cannot parse"),
        ("domains: {algebra: 1}\n", "unknown domain"),
        ("domains: {math: 0, general: 0}\n", "positive"),
        ("domains: {math: -1}\n", "non-negative"),
        ("sources: [{path: missing.jsonl}]\n", "not found"),
        ("- just a list\n", "mapping"),
    ],
)
def test_bad_mix_files(tmp, content, problem):
    f = tmp / "bad.yaml"
    f.write_text(content)
    with pytest.raises(PrismError, match=problem) as e:
        load_mix(str(f))
    assert "\n" not in str(e.value)
    with pytest.raises(PrismError, match="not a preset"):
        load_mix("no_such_mix")


def test_tokenizer_splits_digits():
    from helpers import tiny_tokenizer

    tok = tiny_tokenizer()
    assert [t for t in tok.tokenize("12345") if t.strip("Ġ")] == list("12345")
    assert tok.decode(tok("Answer: 42")["input_ids"]) == "Answer: 42"


@pytest.mark.parametrize(
    "completion,domain,ref,expected",
    [
        ("<think>\n3 + 4 = 7\n</think>\nAnswer: 7", "math", "7", 1.0),
        ("<think>3 + 4 = 7</think> Answer: 7.0", "math", "7", 1.0),
        ("<think>\n3 + 4 = 7\n</think>\nAnswer: 8", "math", "7", 0.0),
        ("Answer: 7", "math", "7", 0.0),  # no reasoning block
        ("<think>\n3 + 4 = 7\nAnswer: 7", "math", "7", 0.0),  # unclosed
        ("<think>x</think>\nAnswer: 7\nAnswer: 7", "math", "7", 0.0),  # multiple answers
        ("<think>x</think>\nAnswer: 7 or 8", "math", "7", 0.0),
        ("<think>x</think>\nAnswer: \uff17", "math", "7", 0.0),  # full-width unicode digit
        ("<think>x</think>\nAnswer: \u0667", "math", "7", 0.0),  # Arabic-Indic digit
        ("<think>x</think>\nAnswer: " + "9" * 5000, "math", "9" * 5000, 1.0),  # huge, exact, no overflow
        ("<think>x</think>\nAnswer: " + "9" * 5000, "math", "9" * 4999 + "8", 0.0),
        ("<think>x</think>\nAnswer: 1e400", "math", "1", 0.0),
        ("<think>x</think>\nAnswer: 101", "science", "100", 1.0),  # within 1%
        ("<think>x</think>\nAnswer: 102", "science", "100", 0.0),
        ("<think>x</think>\nAnswer: -3", "code_reasoning", "-3", 1.0),
        ("<think>x</think>\nAnswer: -3.0", "code_reasoning", "-3", 0.0),  # exact output string
        ("<think><think>x</think>\nAnswer: 7", "math", "7", 0.0),
    ],
)
def test_rewards(completion, domain, ref, expected):
    assert reward(domain, completion, ref) == expected


def test_extract_answer_format_only():
    assert extract_answer("<think>a</think>\nAnswer: 5") == "5"
    assert extract_answer("garbage") is None
    assert reward("math", "<think>a</think>\nAnswer: 5", "6", format_only=True) == 1.0


# The format as a regular expression: the definition the linear-time reader must agree with
# (the regex itself took quadratic time on long completions: 100k characters, 36 s).
_REFERENCE = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*Answer:[ \t]*(?P<answer>[^\n]*?)\s*$", re.S)


def reference_answer(c: str):
    m = _REFERENCE.match(c)
    if m is None or c.count("Answer:") != 1 or "<think>" in m.group("think"):
        return None
    return m.group("answer")


PIECES = ["<think>", "</think>", "Answer:", " ", "\t", "\n", "\r", "\x0b", "\u2003", "42", "x", "<", "Answer", ":"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14))
def test_answer_reader_agrees_with_the_regular_expression(parts):
    c = "".join(parts)
    assert extract_answer(c) == reference_answer(c)


@pytest.mark.parametrize(
    "completion",
    [
        "<think>a</think>\nAnswer: x" + " " * 1_000_000 + "y",  # the lazy regex: O(n^2) over the spaces
        "<think>" + "</think>" * 200_000 + "x",
        "<think>" + "7 + 5 = 12\n" * 100_000 + "</think>\nAnswer: 12",
        "<think>" + " " * 1_000_000 + "</think>Answer:" + " " * 1_000_000 + "\n" + " " * 1_000_000,
    ],
)
def test_long_completions_are_read_in_linear_time(completion):
    """Megabyte completions (a regex with a lazy group needs minutes to hours on these)."""
    reward("math", completion, "12")
    assert (extract_answer(completion) == "12") == completion.endswith("Answer: 12")
