"""`uae-ray bench segmentation --protocol headneck`: one test patient segmented from one training
patient's support, and the refusal of a segment-anything model trained on a target's patient."""

import json

import torch

from uae_ray.models.sam2d import resolve_sam_checkpoint


def test_headneck_segmentation_from_a_training_patients_support(shared_data, tmp_path, capsys):
    from uae_ray.cli import main
    from uae_ray.split import load_split, read_case_patients

    out = tmp_path / "seg.json"
    code = main(["bench", "segmentation", "--data", str(shared_data), "--out", str(out), "--targets", "1",
                 "--k", "1", "--mode", "wpl", "--mode", "gt-slice", "--window-mm", "32", "--threads", "1"])
    assert code == 0
    result = json.loads(out.read_text())
    split, patients = load_split(result["split"]), read_case_patients(shared_data)
    assert result["leave_patient_out"] and len(result["supports"]) == 1 and len(result["targets"]) == 1
    assert not split.is_test(patients[result["supports"][0]]) and split.is_test(patients[result["targets"][0]])
    rows = {r["mode"]: r for r in result["summary"]["1"]}
    assert set(rows) == {"wpl", "gt-slice"} and rows["wpl"]["n_all"] >= 4  # structures whole in both scans
    # real, loose bounds: the true slice boxes segment well, one support of another patient places WPL boxes
    assert rows["gt-slice"]["dice_all"] > 0.5, rows
    assert rows["wpl"]["dice_all"] > 0.2, rows
    assert result["seconds_per_scan"]["1"]["wpl"]["localize_s"] > 0
    assert "Dice per structure" in capsys.readouterr().out


def test_a_segmenter_trained_on_a_target_patient_is_refused(shared_data, tmp_path, caplog):
    from uae_ray.bench.localization_hn import draw_cases
    from uae_ray.cli import main

    _, (target,) = draw_cases(shared_data, "patients-v1", 1, 1)
    payload = torch.load(resolve_sam_checkpoint(None), map_location="cpu", weights_only=True)
    payload["meta"] = {**payload["meta"], "trained_on": [target.case_id]}
    ckpt = tmp_path / "seen.pt"
    torch.save(payload, ckpt)
    code = main(["bench", "segmentation", "--data", str(shared_data), "--out", str(tmp_path / "x.json"),
                 "--targets", "1", "--k", "1", "--sam-checkpoint", str(ckpt)])
    assert code == 2
    assert target.case_id in caplog.text and "leave-patient-out" in caplog.text
    assert not (tmp_path / "x.json").exists()
