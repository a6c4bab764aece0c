"""Seeded, deterministic data for tiny PRISM studies: four domains, train/eval splits, mixes.

Domains (see each module): ``general`` prose, ``code`` Python source, and the reasoning domains
``math``, ``code_reasoning`` ("what does this program print?") and ``science``, which yield
:class:`Problem` objects with a worked solution and a checkable answer.

Every problem is formatted as PRISM does it: the question, then (after one newline) a reasoning
block and the final answer::

    Question: Tom has 7 apples. He gets 5 more. How many apples does Tom have now?
    <think>
    7 + 5 = 12
    </think>
    Answer: 12

Train and eval never overlap: an item belongs to the eval split iff a hash of its text lands in
the eval bucket, and each split's generator only keeps its own items.
"""

from .problems import DOMAINS, REASONING_DOMAINS, Problem, documents, in_split, problems

__all__ = ["DOMAINS", "REASONING_DOMAINS", "Problem", "documents", "in_split", "problems"]
