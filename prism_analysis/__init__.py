"""prism_analysis: what training does to a language model's weights and representations.

Implements the measurements of PRISM (Runwal et al., arXiv 2603.17074). The library installs and
imports alone (the training package, ``prism_train``, is optional). Modules:

- :mod:`prism_analysis.metrics`           the metric definitions: normalized L2, "changed at tau", thresholds
- :mod:`prism_analysis.checkpoint_reader` read checkpoints lazily, align them, stream aligned tensors
- :mod:`prism_analysis.dcp_reader`        sharded torch.distributed.checkpoint directories, read in place
- :mod:`prism_analysis.checkpoint_base`   TensorInfo and the interface every checkpoint view shares
- :mod:`prism_analysis.lora`              ``BASE+ADAPTER``: a PEFT LoRA adapter merged one tensor at a time
- :mod:`prism_analysis.components`        tensor name -> (layer, component), the parts of fused tensors
- :mod:`prism_analysis.weights`           update size and sparsity of a pair (Eq. 1, T12/T22/T23)
- :mod:`prism_analysis.compare`           two updates side by side (Eq. 2, F12, F26)
- :mod:`prism_analysis.trajectory`        front-loading over a checkpoint sequence (F16)
- :mod:`prism_analysis.run_manifest`      a training run's ``trajectory.json`` and its step order
- :mod:`prism_analysis.interpolate`       W(a, b) between base, mid and RL weights (Eq. 3, F13)
- :mod:`prism_analysis.cka`               linear / debiased / RBF / streaming CKA (Eq. 4)
- :mod:`prism_analysis.activations`       every layer's hidden states of a causal LM (nnsight)
- :mod:`prism_analysis.model_cka`         CKA between two checkpoints on probe sets (F14, T14)
- :mod:`prism_analysis.spectral`          update geometry: effective rank, principal angles, bf16 visibility
- :mod:`prism_analysis.similarity`        mutual kNN, CKNNA, Procrustes, SVCCA, RSA with a permutation null
- :mod:`prism_analysis.model_loader`      a model and its tokenizer from a checkpoint
- :mod:`prism_analysis.figures`           the paper's figures, drawn from saved tables
- :mod:`prism_analysis.accumulator`       update / compute / merge statistics (declared reductions)
- :mod:`prism_analysis.fused`             the fused numba CPU kernels behind the statistics
- :mod:`prism_analysis.outputs`           safe, atomic outputs (never over an input or a stranger's files)
- :mod:`prism_analysis.options`           options defined once, with their ranges
- :mod:`prism_analysis.devices`           a validated ``--device``
- :mod:`prism_analysis.progress`          progress bars that suit terminals and logs
- :mod:`prism_analysis.errors`            the one-line error users see
- :mod:`prism_analysis.cli`               the analysis commands of ``prism``
"""

from .errors import PrismError

__version__ = "0.1.0"
__all__ = ["PrismError", "__version__"]
