"""Seeded, deterministic data for tiny PRISM studies: five domains, train/eval splits, mixes.

Domains: ``general`` prose (:mod:`.general`), ``code`` Python source (:mod:`.python_code`), and the
reasoning domains ``math`` (:mod:`.arithmetic`), ``code_reasoning`` ("what does this program
print?", :mod:`.python_code`) and ``science`` (:mod:`.science`), which yield :class:`Problem`
objects with a worked solution and a checkable answer (:mod:`.reasoning` draws them).

Every problem is formatted as PRISM does it: the question, then (after one newline) a reasoning
block and the final answer::

    Question: Tom has 7 apples. He gets 5 more. How many apples does Tom have now?
    <think>
    7 + 5 = 12
    </think>
    Answer: 12

Train and eval never overlap (:func:`in_split`). Mixes of domains and user corpora: :mod:`.mix`.
"""

from .problem import DOMAINS, REASONING_DOMAINS, Problem, in_split
from .reasoning import documents, draw_problem, problem_stream

__all__ = ["DOMAINS", "REASONING_DOMAINS", "Problem", "documents", "draw_problem", "in_split", "problem_stream"]
