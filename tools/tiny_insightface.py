"""Tiny stand-ins for InsightFace's model packs, written with onnx.helper, and test pictures for them.

The real buffalo_l / antelopev2 files cannot be downloaded here (and are licensed for non-commercial
research only), yet the FaceID glue must be tested through the real insightface package. These
models have the real files' names, inputs and outputs, so insightface routes and runs them exactly
as it does the real ones:

- detection (det_10g.onnx / scrfd_10g_bnkps.onnx): SCRFD's interface, input `input.1`
  (1, 3, H, W) and 9 outputs - scores, box distances and 5 keypoints for strides 8, 16 and 32,
  two anchors per location. It "sees a face" where a 32-pixel patch is brighter than its
  neighbourhood (local contrast), so a flat image has none; the box grows with the contrast, and
  the keypoints sit where ArcFace's alignment template puts eyes, nose and mouth inside the box.
- recognition (w600k_r50.onnx / glintr100.onnx): ArcFace's interface, (N, 3, 112, 112) -> (N, 512):
  14-pixel average pooling then a fixed random linear map (RECOGNITION_SEED), so the embedding
  depends on the aligned crop and can be recomputed by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STRIDES = (8, 16, 32)
ANCHORS = 2  # SCRFD-10G's anchors per location
CONTRAST_GAIN, CONTRAST_THRESHOLD = 20.0, 0.3  # score = sigmoid(gain * (contrast - threshold))
BOX_SLOPE, BOX_BASE = 2.0, 1.0  # half box size in strides = slope * contrast + base
# ArcFace's 112-pixel alignment template (eyes, nose, mouth corners), relative to the crop's centre, in half-widths.
TEMPLATE = (np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]) - 56.0) / 56.0
RECOGNITION_POOL = 14  # 112 / 14 = 8x8 cells per channel
RECOGNITION_SEED = 1234
EMBEDDING_WIDTH = 512
PACK_FILES = {"buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"), "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx")}


def recognition_weights() -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(RECOGNITION_SEED)
    features = 3 * (112 // RECOGNITION_POOL) ** 2
    return (generator.standard_normal((EMBEDDING_WIDTH, features)) / np.sqrt(features)).astype(np.float32), (
        generator.standard_normal(EMBEDDING_WIDTH) * 0.1
    ).astype(np.float32)


def recognition_embedding(aligned_bgr: np.ndarray) -> np.ndarray:
    """What the tiny recognition model returns for one 112x112 BGR crop, computed without ONNX."""
    rgb = (aligned_bgr[..., ::-1].astype(np.float32) - 127.5) / 127.5  # insightface's blob: swap to RGB, normalise
    cells = rgb.reshape(8, RECOGNITION_POOL, 8, RECOGNITION_POOL, 3).mean(axis=(1, 3))  # (8, 8, 3)
    weight, bias = recognition_weights()
    return weight @ cells.transpose(2, 0, 1).reshape(-1) + bias


def write_model_pack(models_root: Path, name: str = "buffalo_l") -> Path:
    """Write <models_root>/models/<name>/{detection, recognition}.onnx; returns the pack's folder."""
    folder = Path(models_root) / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    detection, recognition = PACK_FILES[name]
    write_atomically(detection_model(), folder / detection)
    write_atomically(recognition_model(), folder / recognition)
    return folder


def write_atomically(model, path: Path) -> None:
    import onnx

    staged = path.with_name(f".{path.name}.partial")
    onnx.save(model, str(staged))
    staged.replace(path)


def detection_model():
    from onnx import TensorProto, helper

    nodes, initializers = [], []

    def constant(name: str, values, dtype=np.float32) -> str:
        array = np.asarray(values, dtype=dtype)
        kind = TensorProto.INT64 if dtype == np.int64 else TensorProto.FLOAT
        initializers.append(helper.make_tensor(name, kind, array.shape, array.reshape(-1).tolist()))
        return name

    def conv(name: str, source: str, weights, bias) -> str:
        weights = np.asarray(weights, dtype=np.float32).reshape(-1, 1, 1, 1)
        nodes.append(helper.make_node("Conv", [source, constant(f"{name}_w", weights), constant(f"{name}_b", bias)], [name], name=name))
        return name

    def flatten(name: str, source: str, width: int, output: str) -> None:
        nodes.append(helper.make_node("Transpose", [source], [f"{name}_t"], perm=[0, 2, 3, 1], name=f"{name}_t"))
        nodes.append(helper.make_node("Reshape", [f"{name}_t", constant(f"{name}_shape", [-1, width], np.int64)], [output], name=output))

    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["gray"], axes=[1], keepdims=1, name="gray"))
    outputs = {"score": [], "box": [], "kps": []}
    for stride in STRIDES:
        pooled = f"pool{stride}"
        nodes.append(helper.make_node("AveragePool", ["gray"], [pooled], kernel_shape=[stride, stride], strides=[stride, stride], name=pooled))
        if stride == STRIDES[-1]:
            nodes.append(helper.make_node("AveragePool", [pooled], ["around"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0, name="around"))
            nodes.append(helper.make_node("Sub", [pooled, "around"], ["contrast"], name="contrast"))
            # Only a patch at least as contrasted as its 8 neighbours fires: one detection per square.
            nodes.append(helper.make_node("MaxPool", ["contrast"], ["peak_value"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="peak_value"))
            nodes.append(helper.make_node("GreaterOrEqual", ["contrast", "peak_value"], ["is_peak"], name="is_peak"))
            nodes.append(helper.make_node("Cast", ["is_peak"], ["peak"], to=TensorProto.FLOAT, name="peak"))
            source = "contrast"
            score = ([CONTRAST_GAIN] * ANCHORS, [-CONTRAST_GAIN * CONTRAST_THRESHOLD] * ANCHORS)
            box = ([BOX_SLOPE] * 4 * ANCHORS, [BOX_BASE] * 4 * ANCHORS)
            points = np.tile(TEMPLATE.reshape(-1), ANCHORS)
            kps = (points * BOX_SLOPE, points * BOX_BASE)
        else:  # the small strides never fire: one detection per bright patch, at stride 32
            source = pooled
            score = ([0.0] * ANCHORS, [-20.0] * ANCHORS)
            box, kps = ([0.0] * 4 * ANCHORS, [1.0] * 4 * ANCHORS), ([0.0] * 10 * ANCHORS, [0.0] * 10 * ANCHORS)
        logits = conv(f"logits{stride}", source, *score)
        nodes.append(helper.make_node("Sigmoid", [logits], [f"sigmoid{stride}"], name=f"sigmoid{stride}"))
        probability = f"sigmoid{stride}"
        if stride == STRIDES[-1]:
            nodes.append(helper.make_node("Mul", [probability, "peak"], ["peak_score"], name="peak_score"))
            probability = "peak_score"
        flatten(f"score{stride}", probability, 1, f"score_{stride}")
        flatten(f"box{stride}", conv(f"boxes{stride}", source, *box), 4, f"bbox_{stride}")
        flatten(f"kps{stride}", conv(f"points{stride}", source, *kps), 10, f"kps_{stride}")
        outputs["score"].append((f"score_{stride}", 1))
        outputs["box"].append((f"bbox_{stride}", 4))
        outputs["kps"].append((f"kps_{stride}", 10))
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["anchors", width]) for kind in ("score", "box", "kps") for name, width in outputs[kind]],
        initializers,
    )
    return finish(graph)


def recognition_model():
    from onnx import TensorProto, helper

    weight, bias = recognition_weights()
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["cells"], kernel_shape=[RECOGNITION_POOL] * 2, strides=[RECOGNITION_POOL] * 2, name="cells"),
        helper.make_node("Flatten", ["cells"], ["features"], axis=1, name="features"),
        helper.make_node("Gemm", ["features", "embedding_w", "embedding_b"], ["683"], transB=1, name="embedding"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["batch", EMBEDDING_WIDTH])],
        [helper.make_tensor("embedding_w", TensorProto.FLOAT, weight.shape, weight.reshape(-1).tolist()),
         helper.make_tensor("embedding_b", TensorProto.FLOAT, bias.shape, bias.tolist())],
    )
    return finish(graph)


def finish(graph):
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ipadapter-tests")
    model.ir_version = 8  # readable by every onnxruntime release insightface supports
    onnx.checker.check_model(model)
    return model


def face_picture(size: int = 640, faces: tuple[tuple[int, int, int, float], ...] = ((320, 256, 64, 1.0),), background: float = 0.1) -> np.ndarray:
    """(size, size, 3) RGB floats in [0, 1]: dark background, a light square per (x, y, side, brightness).

    What the tiny detector takes for faces; each square is filled with a colour gradient (red grows
    to the right, blue downward) so crops show where and in which channel order they were taken.
    """
    image = np.full((size, size, 3), background, dtype=np.float32)
    for x, y, side, brightness in faces:
        ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
        patch = np.empty((side, side, 3), dtype=np.float32)
        patch[..., 0] = brightness * (0.7 + 0.3 * ramp[None, :])
        patch[..., 1] = brightness * 0.8
        patch[..., 2] = brightness * (0.5 + 0.3 * ramp[:, None])
        image[y : y + side, x : x + side] = patch
    return image
