"""The pack's socket types, defined once.

Socket type names are a public API (saved workflows store them on every link). They carry the
pack's `EXACT_` prefix because ComfyUI keeps one registration per name: the leading IP-Adapter
pack registers `IPADAPTER`, and a socket of ours connected to its nodes (or the reverse) would
hand over an object the other side cannot use.
"""

from .api import io

IPADAPTER = "EXACT_IPADAPTER"
IMAGE_PROMPT = "EXACT_IMAGE_PROMPT"
WEIGHT_SCHEDULE = "EXACT_IPADAPTER_WEIGHTS"
INSIGHTFACE = "EXACT_INSIGHTFACE"  # the leading pack registers INSIGHTFACE, the host FACE_ANALYSIS
CLIP_EMBEDS = "EXACT_CLIP_EMBEDS"  # CLIP image features before the adapter's projection (the leading pack's EMBEDS)

# The V3 types for those names: `IPAdapterSocket.Input(...)`, `IPAdapterSocket.Output(...)`.
IPAdapterSocket = io.Custom(IPADAPTER)
ImagePromptSocket = io.Custom(IMAGE_PROMPT)
WeightScheduleSocket = io.Custom(WEIGHT_SCHEDULE)
InsightFaceSocket = io.Custom(INSIGHTFACE)
ClipEmbedsSocket = io.Custom(CLIP_EMBEDS)
