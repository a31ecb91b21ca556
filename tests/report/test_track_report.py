import numpy as np
import SimpleITK as sitk

from uae_ray.report.tracks import track_report
from uae_ray.tasks.points_io import Track


def _phantom() -> sitk.Image:
    arr = np.full((40, 50, 60), -1000, np.int16)  # z, y, x
    arr[10:30, 15:35, 20:40] = 50
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    img.SetOrigin((-30.0, -25.0, -40.0))
    return img


def test_track_report_shows_found_abstained_and_failed_lesions(tmp_path):
    img = _phantom()
    p = np.array(img.TransformIndexToPhysicalPoint((30, 25, 20)))
    tracks = [
        Track("nodule", *(p + 2.0), 0.91, True, *p, radius_mm=8.0, consistency=1.0, votes=7),
        Track("faint", *p, 0.31, False, *p),
        Track("far", np.nan, np.nan, np.nan, np.nan, False, 500.0, 0.0, 0.0,
              error="lesion far: centre (500.0, 0.0, 0.0) is outside the baseline image"),
    ]
    html = track_report(tmp_path / "r.html", img, "CT", img, "CT", tracks).read_text()
    assert html.count("data:image/png;base64,") == 6 * 3
    assert "nodule" in html and "0.910" in html and "radius 8.0 mm" in html
    assert "not found (abstained)" in html and "outside the baseline image" in html
    assert "1 found, 1 abstained, 1 not tracked" in html
