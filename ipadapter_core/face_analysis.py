"""InsightFace face analysis for FaceID: find the faces in reference images, embed them, crop them.

insightface (with onnxruntime and OpenCV) is an optional dependency: it is imported here, only
when a face model is loaded, so the pack loads and every other node works without it. Models are
read from a folder laid out as InsightFace's own model cache, `<root>/models/<name>/*.onnx`
(ComfyUI users keep buffalo_l in `models/insightface/models/buffalo_l`); nothing is downloaded.

Each face yields what the FaceID pipeline uses: the recognition model's embedding (raw, and
unit-length for all adapters but portrait-unnorm), and the face crop aligned to InsightFace's
five-point template at 224 pixels, which plus adapters show to CLIP.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import IPAdapterError
from .preprocess import to_rgb

REQUIREMENTS_FILE = "requirements-faceid.txt"
MODEL_SUFFIX = ".onnx"  # InsightFace's model files
# The files of the two model packs InsightFace publishes for FaceID (the first two are detection and recognition).
MODEL_PACKS = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx", "1k3d68.onnx", "2d106det.onnx", "genderage.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx", "1k3d68.onnx", "2d106det.onnx", "genderage.onnx"),
}
PROVIDERS = {"CPU": ("CPUExecutionProvider",), "CUDA": ("CUDAExecutionProvider", "CPUExecutionProvider")}
TASKS = ("detection", "recognition")  # the landmark and attribute models of a pack are not needed
# Detector input sizes, tried in turn: a face filling a close-up is found at a smaller size.
DETECTION_SIZES = (640, 480, 320)
CROP_SIZE = 224  # the reference aligns the face crop for CLIP at 224 pixels
FACE_SELECTIONS = ("largest", "all")

log = logging.getLogger(__name__)


def import_insightface() -> Any:
    """The insightface package, or an error that says what to install."""
    try:
        import insightface.app  # noqa: F401
        import insightface.utils.face_align  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise IPAdapterError(
            "FaceID needs the optional packages insightface, onnxruntime and opencv-python-headless, which are not "
            f"installed ({error}). Install them into ComfyUI's Python with `pip install -r {REQUIREMENTS_FILE}` from "
            "this node pack's folder, then restart ComfyUI."
        ) from error
    import insightface

    return insightface


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face. crop: (224, 224, 3) RGB in [0, 1], aligned as the reference aligns it."""

    image_index: int
    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    embedding: torch.Tensor  # the recognition model's raw output
    crop: torch.Tensor

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def embedding_for(self, kind: str) -> torch.Tensor:
        """"raw" (portrait-unnorm reads it) or "normed" (unit length, every other FaceID adapter)."""
        if kind == "raw":
            return self.embedding
        return self.embedding / self.embedding.norm().clamp_min(1e-12)


def missing_models_message(folder: Path, name: str, detail: str) -> str:
    files = ", ".join(MODEL_PACKS.get(name, ("a detection model", "a recognition model (*.onnx)")))
    return (
        f"InsightFace model '{name}' {detail}. Put its files ({files}) in {folder} - that is the folder "
        f"models/insightface/models/{name} of ComfyUI. They come from InsightFace's {name}.zip release; "
        "InsightFace's model files are licensed for non-commercial research use only."
    )


class FaceAnalyzer:
    """A loaded InsightFace model pack: its detection and recognition models."""

    def __init__(self, analysis: Any, name: str, provider: str):
        self.name = name
        self.provider = provider
        self.detector = analysis.models["detection"]
        self.recognizer = analysis.models["recognition"]
        from insightface.app.common import Face as InsightFaceRecord
        from insightface.utils import face_align

        self.record = InsightFaceRecord
        self.norm_crop = face_align.norm_crop

    def detect(self, image: np.ndarray, image_index: int = 0) -> list[Face]:
        """Every face of one (H, W, 3) RGB uint8 image, largest first.

        InsightFace's models take OpenCV's BGR order (they swap to RGB inside); the crop for
        CLIP is taken from the RGB image, so CLIP sees true colours.
        """
        bgr = np.ascontiguousarray(image[..., ::-1])
        boxes, landmarks = np.zeros((0, 5)), None
        for size in DETECTION_SIZES:
            boxes, landmarks = self.detector.detect(bgr, input_size=(size, size), max_num=0)
            if len(boxes):
                break
        if len(boxes) and landmarks is None:
            raise IPAdapterError(f"The detection model of InsightFace '{self.name}' gives no facial landmarks; FaceID needs a pack whose detector does (buffalo_l, antelopev2).")
        faces = []
        for box, points in zip(boxes, landmarks if landmarks is not None else []):
            record = self.record(bbox=box[:4], kps=points, det_score=box[4])
            embedding = np.asarray(self.recognizer.get(bgr, record), dtype=np.float32).reshape(-1)
            crop = self.norm_crop(image, landmark=points, image_size=CROP_SIZE)
            faces.append(
                Face(
                    image_index=image_index,
                    box=tuple(float(v) for v in box[:4]),
                    landmarks=np.asarray(points, dtype=np.float32),
                    embedding=torch.from_numpy(embedding.copy()),
                    crop=torch.from_numpy(crop.astype(np.float32) / 255.0),
                )
            )
        return sorted(faces, key=lambda face: face.area, reverse=True)

    def reference_faces(self, images: torch.Tensor, selection: str = "largest") -> list[Face]:
        """The faces a FaceID prompt uses: per image its largest face, or all of them; every image needs one."""
        if selection not in FACE_SELECTIONS:
            raise IPAdapterError(f"Unknown face selection {selection!r}; choose one of {', '.join(FACE_SELECTIONS)}.")
        pixels = (to_rgb(images).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        chosen: list[Face] = []
        for index, image in enumerate(pixels):
            faces = self.detect(image, index)
            if not faces:
                raise IPAdapterError(
                    f"No face found in reference image {index + 1} of {len(pixels)} (batch_index {index}). Use a larger, "
                    "sharper or more frontal crop of the face, or remove that image from the batch."
                )
            if len(faces) > 1 and selection == "largest":
                log.info("FaceID: image %d has %d faces; using the largest", index + 1, len(faces))
            chosen += faces[:1] if selection == "largest" else faces
        return chosen


def load_face_analyzer(root: str | Path, name: str = "buffalo_l", provider: str = "CPU") -> FaceAnalyzer:
    """Load `<root>/models/<name>` with the CPU or CUDA execution provider, or say what is missing."""
    folder = Path(root) / "models" / name
    if not folder.is_dir():
        raise IPAdapterError(missing_models_message(folder, name, "was not found"))
    if not any(folder.glob(f"*{MODEL_SUFFIX}")):  # InsightFace's own loader globs exactly this
        raise IPAdapterError(missing_models_message(folder, name, f"has no {MODEL_SUFFIX} files"))
    if provider not in PROVIDERS:
        raise IPAdapterError(f"Unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}.")
    insightface = import_insightface()
    import onnxruntime

    if PROVIDERS[provider][0] not in onnxruntime.get_available_providers():
        raise IPAdapterError(
            f"onnxruntime here cannot run on {provider} (it offers {', '.join(onnxruntime.get_available_providers())}). "
            "Choose provider CPU, or install onnxruntime-gpu in place of onnxruntime for CUDA."
        )
    printed = io.StringIO()  # insightface prints every model it loads; keep ComfyUI's console readable
    try:
        with contextlib.redirect_stdout(printed):
            analysis = insightface.app.FaceAnalysis(name=name, root=str(root), allowed_modules=list(TASKS), providers=list(PROVIDERS[provider]))
            analysis.prepare(ctx_id=0 if provider == "CUDA" else -1, det_size=(DETECTION_SIZES[0],) * 2)
    except AssertionError as error:  # insightface asserts that the pack has a detection model
        raise IPAdapterError(missing_models_message(folder, name, "has no face detection model")) from error
    except Exception as error:  # noqa: BLE001  onnxruntime raises its own types for unreadable files
        raise IPAdapterError(missing_models_message(folder, name, f"could not be loaded ({str(error).strip()[:200]})")) from error
    finally:
        log.debug("insightface: %s", printed.getvalue().strip())
    missing = [task for task in TASKS if task not in analysis.models]
    if missing:
        raise IPAdapterError(missing_models_message(folder, name, f"has no {' or '.join(missing)} model"))
    return FaceAnalyzer(analysis, name, provider)
