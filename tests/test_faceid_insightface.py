"""The InsightFace glue, offline, through the real insightface package.

Tiny ONNX models with buffalo_l's (and antelopev2's) file names, inputs and outputs are written by
tools.tiny_insightface into a models/insightface/models/<pack> folder as users keep it. Their
detector takes a bright square for a face; their recognition model is a fixed linear map, so the
embedding can be recomputed by hand from the aligned crop.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from ipadapter_core.errors import IPAdapterError
from ipadapter_core.face_analysis import CROP_SIZE, import_insightface, load_face_analyzer
from tools.tiny_insightface import face_picture, recognition_embedding, write_model_pack

pytest.importorskip("insightface")


@pytest.fixture(scope="module")
def insightface_root(tmp_path_factory):
    """ComfyUI's models/insightface folder with the tiny buffalo_l pack in models/buffalo_l."""
    root = tmp_path_factory.mktemp("models") / "insightface"
    write_model_pack(root, "buffalo_l")
    return root


@pytest.fixture(scope="module")
def analyzer(insightface_root):
    return load_face_analyzer(insightface_root, "buffalo_l", "CPU")


def batch(*pictures: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(pictures))


def centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def test_a_face_is_found_cropped_and_embedded(analyzer):
    from insightface.utils import face_align

    picture = face_picture(faces=((320, 256, 64, 1.0),))
    (face,) = analyzer.reference_faces(batch(picture))
    assert np.abs(centre(face.box) - (352, 288)).max() < 8  # the square's centre
    pixels = (picture * 255).round().astype(np.uint8)
    # The embedding: the recognition model on InsightFace's 112-pixel alignment of the BGR image.
    expected = recognition_embedding(face_align.norm_crop(pixels[..., ::-1], landmark=face.landmarks, image_size=112))
    assert torch.allclose(face.embedding, torch.from_numpy(expected).float(), rtol=1e-4, atol=1e-4)
    assert torch.allclose(face.embedding_for("normed").norm(), torch.tensor(1.0)) and torch.equal(face.embedding_for("raw"), face.embedding)
    # The crop for CLIP: the same alignment at 224 pixels, taken from the RGB image.
    assert face.crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    assert torch.equal(face.crop, torch.from_numpy(face_align.norm_crop(pixels, landmark=face.landmarks, image_size=CROP_SIZE)).float() / 255)
    middle = face.crop[100:124, 100:124].mean(dim=(0, 1))
    assert middle[0] > middle[2] + 0.1 and middle[0] > 0.7  # the square's colours, red above blue: RGB order kept
    assert face.crop[:8, :8].max() < 0.15  # the dark background around it


def test_faces_in_a_resized_image_are_placed_in_its_own_pixels(analyzer):
    picture = face_picture(size=640, faces=((64, 448, 64, 1.0),))[:, :480]  # 640 high, 480 wide: resized for the detector
    (face,) = analyzer.reference_faces(batch(picture))
    assert np.abs(centre(face.box) - (96, 480)).max() < 8


def test_largest_face_by_default_every_face_on_request(analyzer):
    picture = face_picture(faces=((64, 64, 64, 0.6), (448, 384, 64, 1.0)))
    every = analyzer.reference_faces(batch(picture), "all")
    assert len(every) == 2 and every[0].area > every[1].area
    (largest,) = analyzer.reference_faces(batch(picture))
    assert np.abs(centre(largest.box) - (480, 416)).max() < 8  # the brighter square gets the larger box
    assert torch.equal(largest.embedding, every[0].embedding)


def test_several_reference_images_give_one_face_each(analyzer):
    faces = analyzer.reference_faces(batch(face_picture(faces=((320, 256, 64, 1.0),)), face_picture(faces=((128, 128, 64, 0.9),))))
    assert [face.image_index for face in faces] == [0, 1]
    assert not torch.allclose(faces[0].embedding, faces[1].embedding)


@pytest.mark.parametrize("blank", [0.0, 0.5, 1.0])
def test_blank_image_names_its_index(analyzer, blank):
    images = batch(face_picture(), np.full((640, 640, 3), blank, dtype=np.float32))
    with pytest.raises(IPAdapterError, match=r"No face found in reference image 2 of 2 \(batch_index 1\).*larger.*frontal"):
        analyzer.reference_faces(images)


def test_antelopev2_pack_loads_from_its_folder(insightface_root):
    write_model_pack(insightface_root, "antelopev2")
    analyzer = load_face_analyzer(insightface_root, "antelopev2", "CPU")
    assert len(analyzer.reference_faces(batch(face_picture()))) == 1


def test_missing_models_name_the_folder_and_files(tmp_path, insightface_root):
    with pytest.raises(IPAdapterError, match=r"'buffalo_l' was not found.*det_10g\.onnx, w600k_r50\.onnx.*models/buffalo_l.*non-commercial"):
        load_face_analyzer(tmp_path, "buffalo_l")
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    with pytest.raises(IPAdapterError, match="has no .onnx files"):
        load_face_analyzer(tmp_path, "buffalo_l")
    recognition_only = tmp_path / "models" / "buffalo_l" / "w600k_r50.onnx"
    recognition_only.write_bytes((insightface_root / "models" / "buffalo_l" / "w600k_r50.onnx").read_bytes())
    with pytest.raises(IPAdapterError, match="has no face detection model"):
        load_face_analyzer(tmp_path, "buffalo_l")
    (tmp_path / "models" / "buffalo_l" / "det_10g.onnx").write_bytes(b"not a model")
    with pytest.raises(IPAdapterError, match="could not be loaded"):
        load_face_analyzer(tmp_path, "buffalo_l")


def test_cuda_provider_without_a_cuda_onnxruntime(insightface_root):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(IPAdapterError, match="cannot run on CUDA.*provider CPU.*onnxruntime-gpu"):
        load_face_analyzer(insightface_root, "buffalo_l", "CUDA")


def test_without_insightface_the_error_names_the_packages(monkeypatch):
    monkeypatch.setitem(sys.modules, "insightface", None)  # what a failed import leaves: `import insightface` raises
    with pytest.raises(IPAdapterError, match="insightface, onnxruntime and opencv-python-headless.*requirements-faceid.txt"):
        import_insightface()
