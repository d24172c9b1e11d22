"""Load InsightFace: a face analysis model pack from models/insightface -> EXACT_INSIGHTFACE (for FaceID)."""

from __future__ import annotations

from pathlib import Path

import folder_paths

from ..ipadapter_core.face_analysis import MODEL_PACKS, PROVIDERS, FaceAnalyzer, load_face_analyzer
from .api import CATEGORY, io
from .folders import INSIGHTFACE_FOLDER
from .socket_types import InsightFaceSocket


def insightface_roots() -> list[Path]:
    return [Path(path) for path in folder_paths.get_folder_paths(INSIGHTFACE_FOLDER)]


def available_packs() -> list[str]:
    """The two packs FaceID uses, then any other pack folder users keep there."""
    found = {
        entry.name
        for root in insightface_roots()
        if (root / "models").is_dir()
        for entry in (root / "models").iterdir()
        if entry.is_dir() and not entry.name.startswith(".")
    }
    return list(MODEL_PACKS) + sorted(found - set(MODEL_PACKS))


def load_insightface(model_name: str, provider: str = "CPU") -> FaceAnalyzer:
    """From the first insightface folder that holds the pack (or, to name it in the error, the first one)."""
    roots = insightface_roots() or [Path(folder_paths.models_dir, INSIGHTFACE_FOLDER)]
    root = next((r for r in roots if (r / "models" / model_name).is_dir()), roots[0])
    return load_face_analyzer(root, model_name, provider)


class LoadInsightFace(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ExactLoadInsightFace",
            display_name="Load InsightFace (IP-Adapter FaceID)",
            category=CATEGORY,
            description=(
                "Loads an InsightFace face analysis pack (detection + recognition) for FaceID adapters, from "
                "models/insightface/models/<pack>. Needs the optional packages of requirements-faceid.txt. "
                "InsightFace's model files are licensed for non-commercial research use only."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name", options=available_packs(), default="buffalo_l",
                    tooltip="The model pack folder in models/insightface/models: buffalo_l (what the FaceID adapters were trained with) or antelopev2.",
                ),
                io.Combo.Input("provider", options=list(PROVIDERS), default="CPU", tooltip="Where onnxruntime runs the face models. CUDA needs onnxruntime-gpu."),
            ],
            outputs=[InsightFaceSocket.Output(display_name="insightface", tooltip="The face analysis models, to connect to Encode Face Image Prompt.")],
        )

    @classmethod
    def execute(cls, model_name: str, provider: str = "CPU") -> io.NodeOutput:
        return io.NodeOutput(load_insightface(model_name, provider))
