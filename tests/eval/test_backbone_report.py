import json

from equissl.cli import main


def test_steerable_report_is_exact_and_plain_resnet_is_not(tmp_path):
    out = tmp_path / "c4.json"
    assert (
        main(["equivariance", "--backbone", "steerable_d4", "--tiny", "--seed", "3", "--out", str(out)]) == 0
    )
    figures = json.loads(out.read_text())["group_equivariance"]
    assert figures["group"] == "D4"
    assert figures["max_features_error"] < 1e-5 and figures["max_invariant_error"] < 1e-5
    assert figures["max_plain_invariant_error"] > 1e-2


def test_poly_vit_report_is_shift_invariant_and_plain_vit_is_not(tmp_path):
    out = tmp_path / "vit.json"
    assert main(["equivariance", "--backbone", "poly_vit_tiny", "--tiny", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())["shift_consistency"]
    assert figures["ours"]["consistency"] == 1.0 and figures["ours"]["max_relative_change"] < 1e-4
    assert figures["plain"]["relative_change"] > 1e-2
