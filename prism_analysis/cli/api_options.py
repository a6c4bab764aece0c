"""The options of the analysis commands, declared once, as the keyword arguments of the API.

Each dataclass lists the keyword arguments of one library function that its command passes through
unchanged: a field is a parameter of that function (same name, same default; ``tests/cli`` checks
both against the function's signature), with its help, its flag and its valid range
(:func:`~prism_analysis.options.option`). A command adds them with
:func:`~prism_analysis.options.add_options` and calls the function with ``**vars(from_args(...))``,
as the training commands do with :class:`~prism_train.config.TrainConfig`. Options that are not
parameters of the function (``--out``, ``--no-figure``, ``--probe``, the checkpoint options of
:func:`~prism_analysis.cli.parser.add_checkpoint_options`) stay in the command.

- :class:`AuditOptions`: :func:`~prism_analysis.weights.audit.audit` (``prism audit``)
- :class:`CkaOptions`: :func:`~prism_analysis.representations.model_cka.model_cka` (``prism cka``)
- :class:`DiffOptions`: :func:`~prism_analysis.representations.model_diff.model_diff` (``prism diff``)
- :class:`TrajectoryOptions`: :func:`~prism_analysis.weights.trajectory.analyse_trajectory`
  (``prism trajectory``)
- :class:`CompareOptions`: :func:`~prism_analysis.weights.compare.compare_updates` (``prism compare``)

The map from a parameter to its flag (:data:`~prism_analysis.cli.parser.FLAGS`, used to show a
library error in command-line words) is read off these classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..metrics import DEFAULT_THRESHOLD, DEFAULT_THRESHOLDS
from ..options import number_list, option

_THRESHOLDS = number_list(float, percent=True, low=0)
_DTYPES = ("float32", "bfloat16", "float16")


def _names(text: str) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")``: a comma-separated list of names."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


_names.__name__ = "list"


@dataclass
class AuditOptions:
    """``prism audit``: :func:`~prism_analysis.weights.audit.audit`'s options."""

    thresholds: tuple = option(
        DEFAULT_THRESHOLDS,
        "relative-change thresholds, fractions or percents (0.1%%,1%% is 0.001,0.01)",
        parse=_THRESHOLDS,
        metavar="LIST",
    )
    spectral: bool = option(
        False,
        "also the update geometry of every 2-D tensor: effective_rank, stable_rank, principal angles "
        "(max/mean, degrees), principal_alignment, fraction_visible_bf16 (+ geometry_by_layer_and_component figure)",
    )
    spectral_k: int | None = option(None, "top-K principal subspaces (default 16)", low=1, parse=int, metavar="K")
    units: tuple = option(
        (),
        "also per attention head and/or MLP neuron: heads, neurons or heads,neurons "
        "(heads.csv, neurons.csv, heads_by_layer figure; q/k/v rows and o columns by head, GQA-aware)",
        parse=_names,
        metavar="LIST",
    )


@dataclass
class ForwardOptions:
    """How both models run over the probe prompts: shared by :class:`CkaOptions` and :class:`DiffOptions`."""

    n: int = option(
        200,
        "prompts per probe set; under torchrun write --n-prompts (torchrun reads --n as an abbreviation "
        "of its own options)",
        low=1,
        aliases=("--n-prompts",),
    )
    dtype: str | None = option(None, "model dtype (default: the checkpoint's)", choices=_DTYPES)
    batch_size: int = option(1, "prompts per forward pass (pads are masked)", low=1)
    max_length: int = option(512, "truncate prompts to this many tokens (>= 2)", low=2)
    tokenizer: str | None = option(None, "tokenizer path when the checkpoints have none")
    trust_remote_code: bool = option(False, "allow model code from the checkpoint")


@dataclass
class CkaOptions(ForwardOptions):
    """``prism cka``: :func:`~prism_analysis.representations.model_cka.model_cka`'s options."""

    pool: str = option("mean", "pooling over a prompt's tokens (mean: as PRISM)", choices=("mean", "last", "tokens"))
    bootstrap: int = option(20, "resamples of PRISM's protocol, the resample_* columns (0: none)", low=0)
    sample_size: int | None = option(
        None, "prompts per resample (default: half of n)", low=1, parse=int, flag="--sample"
    )
    seed: int = option(0, "seed of the bootstrap resamples")
    debiased: bool = option(False, "debiased CKA (unbiased HSIC)")
    measures: tuple = option(
        ("cka",),
        "similarity measures, comma-separated, of cka,mutual_knn,cknna,procrustes,svcca,rsa. "
        "Beyond cka: OUT/similarity.csv with a permutation null (null mean, p-value, corrected score) per layer",
        parse=_names,
        flag="--measure",
        metavar="LIST",
    )
    permutations: int = option(100, "row shuffles of the permutation null", low=1)
    knn_k: int = option(10, "neighbours of mutual_knn and cknna", low=1)
    svcca_k: int = option(10, "SVD directions kept by svcca", low=1)
    all_pairs: bool = option(False, "also every layer of A vs every layer of B (heatmap)")


@dataclass
class DiffOptions(ForwardOptions):
    """``prism diff``: :func:`~prism_analysis.representations.model_diff.model_diff`'s options."""

    lens: bool = option(
        True, "output divergence only: no logit lens, no difference lens (a plain forward pass of each model)"
    )
    lens_layers: str | None = option(
        None,
        "layers of the logit lens: all (default), none, or comma-separated indices (0 = embedding output)",
        metavar="LIST",
    )
    first_k: int = option(5, "positions of the first-positions difference lens", low=1)
    top: int = option(50, "positions in tokens.csv per probe", low=0)
    top_tokens: int = option(5, "each model's top next tokens in tokens.csv", low=1)
    lens_top: int = option(10, "tokens promoted/suppressed per layer in lens.csv", low=1)
    context: int = option(12, "tokens of context shown in tokens.csv", low=1)
    bootstrap: int = option(1000, "bootstrap resamples of the intervals (0: none)", low=0)
    seed: int = option(0, "seed of the bootstrap")


@dataclass
class TrajectoryOptions:
    """``prism trajectory``: :func:`~prism_analysis.weights.trajectory.analyse_trajectory`'s options."""

    thresholds: tuple = option(
        DEFAULT_THRESHOLDS, "threshold sweep, fractions or percents", parse=_THRESHOLDS, metavar="LIST"
    )
    tau: float = option(DEFAULT_THRESHOLD, "threshold for the changed sets (0.01 = 1%%)", low=0)


@dataclass
class CompareOptions:
    """``prism compare``: :func:`~prism_analysis.weights.compare.compare_updates`'s options."""

    tau: float = option(DEFAULT_THRESHOLD, "threshold for changed masks (0.01 = 1%%)", low=0)


#: every dataclass above, with the API function it describes ("module:function")
API = {
    AuditOptions: "prism_analysis.weights.audit:audit",
    CkaOptions: "prism_analysis.representations.model_cka:model_cka",
    DiffOptions: "prism_analysis.representations.model_diff:model_diff",
    TrajectoryOptions: "prism_analysis.weights.trajectory:analyse_trajectory",
    CompareOptions: "prism_analysis.weights.compare:compare_updates",
}
