"""Representations: what a forward pass computes, compared between two checkpoints.

- :mod:`~prism_analysis.representations.model_loader` a model and its tokenizer from any checkpoint form
- :mod:`~prism_analysis.representations.activations`  every layer's hidden states (nnsight), pooled or per token
- :mod:`~prism_analysis.representations.cka`          linear / debiased / RBF / streaming / minibatch CKA (Eq. 4)
- :mod:`~prism_analysis.representations.similarity`   mutual kNN, CKNNA, Procrustes, SVCCA, RSA with a permutation null
- :mod:`~prism_analysis.representations.model_cka`    CKA of two checkpoints on probe sets (F14, T14)
- :mod:`~prism_analysis.representations.model_diff`   output KL, logit lens and difference lens of two checkpoints

Imports :mod:`~prism_analysis.checkpoints` and the top-level modules only, never
:mod:`~prism_analysis.weights` (``tests/test_structure.py``).
"""

from .._lazy import exports

API = {
    "linear_cka": "cka",
    "layerwise_cka": "cka",
    "cka_matrix": "cka",
    "StreamingCKA": "cka",
    "MinibatchCKA": "cka",
    "ModelCKA": "model_cka",
    "ModelDiff": "model_diff",
    "diff_models": "model_diff",
    "similarity_table": "similarity",
    "collect_activations": "activations",
    "load_model": "model_loader",
}
__all__ = list(API)
__getattr__, __dir__ = exports(__name__, API)
