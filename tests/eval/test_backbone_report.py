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


def test_symmetrized_backbone_report_gives_the_wrapped_and_the_bare_errors(tmp_path):
    out = tmp_path / "fa.json"
    settings = ["backbone.model_name=test_convnext", "backbone.frame=d4"]
    assert main(["equivariance", "--backbone", "timm", *settings, "--size", "32", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())["symmetry"]
    assert (figures["kind"], figures["group"], figures["input_size"]) == ("frame", "d4", 32)
    assert figures["max_invariant_error"] < 1e-5 and figures["max_map_error"] < 1e-5
    assert figures["max_bare_invariant_error"] > 1e-2 and figures["max_bare_map_error"] > 1e-2
    settings = [
        "backbone.model_name=mobilenet_v3_small",
        "backbone.kwargs={width_mult: 0.25}",
        "backbone.canonicalizer=c4",
        "backbone.canonicalizer_width=4",
    ]
    assert (
        main(["equivariance", "--backbone", "torchvision", *settings, "--size", "32", "--out", str(out)]) == 0
    )
    figures = json.loads(out.read_text())["symmetry"]
    assert figures["kind"] == "canonicalizer" and figures["max_invariant_error"] < 1e-5
    assert figures["max_bare_invariant_error"] > 1e-2


def test_symmetry_settings_on_a_lidar_backbone_are_refused(capsys):
    assert main(["equivariance", "--backbone", "pointpillars", "backbone.frame=c4"]) == 2
    assert "point clouds" in capsys.readouterr().err
