"""scripts/saved_activations.py: what autograd keeps after one forward of the STDiff step."""

import stdiff.spade as spade
import stdiff.unet_blocks as blocks
import stdiff.unet_motion as unet
from scripts import saved_activations as sa


def test_counts_the_lean_norms_savings_once_per_storage(monkeypatch):
    lean = sa.saved_activations("tiny", "bf16_cl", adjoint=False, depth=1)
    for module, name in (
        (blocks, "group_norm_silu"),
        (unet, "group_norm_silu"),
        (spade, "instance_norm_modulate"),
    ):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    sa.use_unfused_norms()
    unfused = sa.saved_activations("tiny", "bf16_cl", adjoint=False, depth=1)

    for out in (lean, unfused):
        # depth 1 puts every storage under one of the top-level modules, once.
        assert abs(sum(out["saved_gb_by_module"].values()) - out["saved_gb"]) < 1e-12
        assert abs(sum(out["saved_gb_by_dtype"].values()) - out["saved_gb"]) < 1e-12
        assert set(out["saved_gb_by_module"]) <= {"unet", "tde", "(root)"}
    # The unfused ops keep float32 copies and norm outputs; the lean nodes keep bf16 inputs.
    assert unfused["saved_gb_by_dtype"]["float32"] > 1.3 * lean["saved_gb_by_dtype"]["float32"]
    assert lean["saved_gb"] < 0.8 * unfused["saved_gb"]
