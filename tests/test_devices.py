"""Where the work runs: --device parsing, and the defaults (weight statistics on the CPU, forward
passes on the GPU where one is)."""

import pytest
import torch
from helpers import save_planted_pair

from prism_analysis.devices import WEIGHTS_DEVICE, resolve_device
from prism_analysis.errors import PrismError


@pytest.mark.parametrize(
    ("spec", "message"),
    [("gpu0", "is not a device"), ("meta", "holds no values"), ("cuda", "torch sees none"), ("xla", "not available")],
)
def test_bad_devices_are_one_line_errors(spec, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PrismError, match=message):
        resolve_device(spec)


def test_defaults(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")  # forward passes: the GPU where one is
    assert resolve_device(None, default=WEIGHTS_DEVICE) == torch.device("cpu") == torch.device(WEIGHTS_DEVICE)
    assert resolve_device("cpu") == torch.device("cpu")


def test_weight_statistics_stay_on_the_cpu_where_a_gpu_is(tmp_path, monkeypatch):
    """audit, compare_updates and analyse_trajectory with no device never ask for the default device
    (cuda where a GPU is) and never touch CUDA when torch reports a GPU (this CPU build would raise at
    the first tensor moved there); audit --spectral, the decompositions, does ask for it."""
    from prism_analysis import devices
    from prism_analysis.weights.audit import audit
    from prism_analysis.weights.compare import compare_updates
    from prism_analysis.weights.trajectory import analyse_trajectory

    root = save_planted_pair(tmp_path)
    a, b = root / "a", root / "b"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []
    monkeypatch.setattr(devices, "default_device", lambda: asked.append(1) or torch.device("cpu"))
    moved = "model.layers.1.mlp.up_proj.weight"
    assert audit(a, b, progress=False).tensors.set_index("name").loc[moved, "n_changed_0.01"] == 10
    assert compare_updates(a, b, a, b, progress=False).summary()["total"]["jaccard"] == 1.0
    assert analyse_trajectory([a, b, b], progress=False).steps == [0, 1, 2]
    assert asked == []
    audit(a, b, progress=False, spectral=True, spectral_k=2)
    assert asked == [1]
