"""quality_filter: the crops that crop's manifest scores as blurred, turned or small are dropped."""

import numpy as np

from tripletface.data.filters import quality_filter
from tripletface.data.index import FaceIndex


def test_quality_filter_drops_blurred_and_turned_crops_by_the_manifest(tmp_path):
    """data.min_blur / data.max_pose: the crops crop scored below the bar go, identities left empty go,
    unscored images stay."""
    rows, paths, labels = [], [], []
    spec = {"a": [(100, 0.0), (10, 0.0), (100, 0.5)], "b": [(5, 0.1)], "c": [(80, -0.35), (90, 0.05)]}
    for label, (name, crops) in enumerate(sorted(spec.items())):
        for j, (blur, pose) in enumerate(crops):
            rows.append({"source": f"{name}/{j}.jpg", "status": "ok", "output": f"{name}/{j}.png",
                         "blur": blur, "pose": pose})
            paths.append(str(tmp_path / name / f"{j}.png"))
            labels.append(label)
    paths.append(str(tmp_path / "c" / "added_later.png"))  # not in the manifest
    labels.append(2)
    index = FaceIndex(tuple(paths), np.array(labels), ("a", "b", "c"))

    kept, dropped = quality_filter(index, rows, tmp_path, min_blur=50, max_pose=0.3)
    expect = [p for p, (blur, pose) in zip(paths, [c for n in sorted(spec) for c in spec[n]])
              if blur >= 50 and abs(pose) <= 0.3] + [paths[-1]]
    assert list(kept.paths) == expect and dropped == 4
    assert kept.names == ("a", "c")  # b lost its only crop
    assert [kept.names[i] for i in kept.labels] == ["a", "c", "c"]
    # a 0 threshold is off
    assert quality_filter(index, rows, tmp_path, min_blur=50)[1] == 2
    assert quality_filter(index, rows, tmp_path, max_pose=0.3)[1] == 2
    assert quality_filter(index, rows, tmp_path)[0].paths == index.paths
    # data.min_face_size: the face crop measured in the original photo
    for row, size in zip(rows, (120, 60, 120, 40, 95, 80)):
        row["face_size"] = size
    kept, dropped = quality_filter(index, rows, tmp_path, min_face_size=80)
    assert dropped == 2 and kept.names == ("a", "c") and paths[1] not in kept.paths
    assert [kept.names[i] for i in kept.labels] == ["a", "a", "c", "c", "c"]


def test_training_quality_filter_names_its_folder_and_only_the_rules_that_are_on(tmp_path, capsys):
    """What training prints for a folder's quality filter: the crops dropped from that folder, the
    rules in force (not the ones at 0, which are off) and the crops of all folders it filtered."""
    import json

    from tripletface.config import load_config
    from tripletface.training.sources import quality_filter as training_filter

    sizes = {"a": [120, 60, 120], "b": [40, 95, 80]}
    rows, paths, labels = [], [], []
    for label, (name, faces) in enumerate(sorted(sizes.items())):
        for j, size in enumerate(faces):
            rows.append({"source": f"{name}/{j}.jpg", "status": "ok", "output": f"{name}/{j}.png", "blur": 100,
                         "pose": 0.0, "face_size": size})
            paths.append(str(tmp_path / name / f"{j}.png"))
            labels.append(label)
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = FaceIndex(tuple(paths), np.array(labels), ("a", "b"))
    kept = training_filter(load_config(overrides=["data.min_face_size=80"]), index, tmp_path)
    assert len(kept) == 4
    err = capsys.readouterr().err
    assert f"data: quality filter dropped 2 crops of {tmp_path} (face < 80 px), of the 6 crops of every" in err
    assert "blur" not in err and "pose" not in err
