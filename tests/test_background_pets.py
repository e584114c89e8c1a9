"""The background rule end to end on real photos: the Oxford-IIIT Pet subset of ``../shared/datasets`` (the demo's
CNN does not learn a planted background as a place: its evidence for a flat background is spread over the whole
image, so its background focus stays near 1; see the README)."""

import os
from pathlib import Path

import pytest

from pipeline import audit
from pipeline.artifacts import Artifact

pytestmark = pytest.mark.slow


def shared_pets() -> Path | None:
    """The subset beside the project (``../shared``, as in CI), or where ``GRADCAM_AUDIT_SHARED`` says."""
    here = Path(__file__).resolve().parents[1]
    for root in (os.environ.get("GRADCAM_AUDIT_SHARED"), here.parent / "shared", Path("/work/shared")):
        if root and (Path(root) / "datasets" / "oxford_pets_subset" / "annotations" / "trimaps").is_dir():
            return Path(root) / "datasets" / "oxford_pets_subset"
    return None


PETS = shared_pets()


@pytest.mark.skipif(PETS is None, reason="the Oxford-IIIT Pet subset of ../shared/datasets is not beside the project")
def test_a_background_learnt_on_half_the_dogs_is_flagged_for_the_background_with_true_masks(tmp_path):
    for name, breeds in {"cat": ("Abyssinian", "Bengal"), "dog": ("american_bulldog",)}.items():
        (tmp_path / "pets" / name).mkdir(parents=True)
        for breed in breeds:
            for photo in sorted((PETS / "images").glob(f"{breed}_*.jpg")):
                (tmp_path / "pets" / name / photo.name).symlink_to(photo)
    artifact = Artifact(kind="background", class_name="dog", fill="colour", rate=0.5)
    result = audit(str(tmp_path / "pets"), artifact=artifact.as_dict(), masks=str(PETS / "annotations" / "trimaps"),
                   out=str(tmp_path / "report"))
    figures = result.meta["validation"]
    assert figures["rank"] == 1 and figures["flagged"] and figures["clean_classes_flagged"] == []
    dog = result.classes.set_index("class_name").loc["dog"]
    assert dog["region_kind"] == "background" and dog["region"] == "the background (true masks)"
    assert dog["status"] == "confirmed" and dog["occlusion_excess_drop"] > 0.2
    assert (result.samples["mask_kind"] == "true").all()
    # Each photo's reliance on its background (the drop of its label's log-odds when the background is grey) ranks
    # the dogs with the planted background above every other photo better than their heatmaps' background focus.
    assert dog["reliance_column"] == "background_reliance" and figures["sample_score"] == "reliance"
    assert figures["sample_statistic"] == "background focus" and figures["focus_auroc"] > 0.85
    assert figures["sample_auroc"] == figures["reliance_auroc"] > max(0.95, figures["focus_auroc"])
    # Half the dogs carry it: a flag by chance would be right half the time.
    assert figures["uses_shortcut_precision"] > 0.8 and figures["uses_shortcut_recall"] > 0.6
