import numpy as np
import SimpleITK as sitk

from uae_ray.report.landmarks import TargetView, landmark_report
from uae_ray.report.slices import world_slice
from uae_ray.tasks.points_io import Detection, NamedPoints


def _phantom(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    arr = np.full((40, 50, 60), -1000, np.int16)  # z, y, x
    arr[10:30, 15:35, 20:40] = 50
    arr[20, 25, 30] = 1000  # a bright voxel at index x=30, y=25, z=20
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    img.SetOrigin((-30.0, -25.0, -40.0))
    img.SetDirection(direction)
    return img


def test_world_slice_is_centred_on_the_point_for_any_direction():
    for direction in [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)]:
        img = _phantom(direction)
        p = np.array(img.TransformIndexToPhysicalPoint((30, 25, 20)))
        for plane in ("axial", "coronal", "sagittal"):
            s = world_slice(img, p, plane, fov_mm=21.0, pixels=21)
            assert s.shape == (21, 21)
            assert np.nanargmax(s) == 10 * 21 + 10, plane  # the bright voxel is at the centre


def test_world_slice_orientation_axial():
    img = _phantom()
    p = np.array(img.TransformIndexToPhysicalPoint((30, 25, 20)))
    s = world_slice(img, p + np.array([5.0, 0, 0]), "axial", fov_mm=21.0, pixels=21)
    # the bright voxel is 5 mm to the patient's right (-x): left of centre on screen
    assert np.unravel_index(np.nanargmax(s), s.shape) == (10, 5)


def test_landmark_report_writes_html_with_images(tmp_path):
    img = _phantom()
    p = np.array(img.TransformIndexToPhysicalPoint((30, 25, 20)))
    points = NamedPoints(("bright",), p[None])
    dets = [Detection("t", "bright", *p, 0.9)]
    out = landmark_report(tmp_path / "r.html", img, "CT", points, [TargetView("t", img, "CT", dets)])
    html = out.read_text()
    assert html.count("data:image/png;base64,") == 6
    assert "bright" in html and "0.900" in html


def test_training_report_curves(tmp_path):
    from uae_ray.report.training import training_report

    history = [{"step": s, "loss": 3.0 - 0.01 * s, "local": 2.0 - 0.005 * s, "global": 1.0, "lr": 1e-3,
                "steps_per_s": 1.2} for s in range(20, 220, 20)]
    out = training_report(tmp_path / "train.html", history, {"command": "python -m uae_ray.train.loop --steps 200"})
    text = out.read_text()
    assert text.count("<svg") == 3 and text.count("<polyline") == 5  # 3 loss parts, lr, speed
    assert ">loss 1<" in text and "step 200, loss 1," in text and "python -m uae_ray.train.loop" in text
    from PIL import Image

    png = Image.open(tmp_path / "train.png")
    assert png.size == (640, 260)
    # the loss curve is drawn: more than background, frame and text colours
    assert len(set(png.getdata())) > 4


def test_landmark_report_shows_each_template_image_once_and_both_points(tmp_path):
    img = _phantom()
    p = np.array(img.TransformIndexToPhysicalPoint((30, 25, 20)))
    points = NamedPoints(("bright", "other"), np.stack([p, p + 4.0]))
    views = [TargetView(f"t{i}", img, "CT", [Detection(f"t{i}", n, *(x + 1.0), 0.8) for n, x in zip(points.names, points.xyz)])
             for i in range(3)]
    html = landmark_report(tmp_path / "r.html", img, "CT", points, views).read_text()
    assert html.count("data:image/png;base64,") == 3 * 2 + 3 * 2 * 3  # template once, then each detection
    assert html.count("template (") == 2 * 3 and html.count("detected (") == 2 * 3
    assert f"template ({p[0]:.1f}, {p[1]:.1f}, {p[2]:.1f})" in html


def test_slices_have_orientation_letters_a_scale_bar_and_a_tissue_window():
    from uae_ray.report.slices import annotate, render_point, tissue_at, window

    img = _phantom()
    inside = np.array(img.TransformIndexToPhysicalPoint((30, 25, 20)))
    assert tissue_at(img, inside, "CT") == "bone" and tissue_at(img, inside + [0, 0, -6.0], "CT") == "soft tissue"
    assert tissue_at(img, np.array(img.TransformIndexToPhysicalPoint((2, 2, 2))), "CT") == "lung"
    assert tissue_at(img, inside, "MR") == "soft tissue"
    soft = window(np.array([[-1000.0, 50.0, 1000.0]]), "CT", "soft tissue")
    lung = window(np.array([[-1000.0, 50.0, 1000.0]]), "CT", "lung")
    assert soft[0, 1] > soft[0, 0] and lung[0, 0] > soft[0, 0]  # air is not black in the lung window
    from PIL import Image

    blank = annotate(Image.new("RGB", (160, 160)), "axial", 180.0)
    arr = np.asarray(blank)
    assert arr[:, :12].any() and arr[:, -12:].any() and arr[-8:, :70].any()  # R and L letters, scale bar
    assert len(render_point(img, inside, "CT")) == 3
