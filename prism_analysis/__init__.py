"""prism_analysis: what training does to a language model's weights and representations.

Implements the measurements of PRISM (Runwal et al., arXiv 2603.17074):

- :mod:`prism_analysis.checkpoint`  open Hugging Face checkpoints and stream aligned tensor pairs
- :mod:`prism_analysis.components`  tensor name -> (layer, component)
- :mod:`prism_analysis.weights`     update size and sparsity of a checkpoint pair (Eq. 1, T12/T22/T23)
- :mod:`prism_analysis.cka`         linear / debiased / RBF / streaming CKA (Eq. 4)
- :mod:`prism_analysis.activations` every layer's hidden states of a causal LM
- :mod:`prism_analysis.trajectory`  front-loading over a checkpoint sequence (F16)
- :mod:`prism_analysis.compare`     two updates side by side (Eq. 2, F12, F26)
- :mod:`prism_analysis.interpolate` W(a, b) between base, mid and RL weights (Eq. 3, F13)
- :mod:`prism_analysis.figures`     the paper's figures, drawn from saved tables
"""

from .errors import PrismError

__version__ = "0.1.0"
__all__ = ["PrismError", "__version__"]
