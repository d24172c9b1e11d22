"""The image encoders IP-Adapters were trained with, and the outputs adapters read: defined once.

An adapter reads one output of one encoder: the pooled, projected embedding (`image_embeds`),
the hidden states of the encoder's second-to-last layer (`penultimate_hidden_states`), or
InsightFace's identity embedding of a face. The width of what it reads names the encoder, and
the encoder's full set of widths tells it apart from look-alikes (a ViT-L projecting to 1024
has ViT-H's embedding width, not its hidden width; SigLIP has no projection at all).
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_EMBEDS = "image_embeds"
PENULTIMATE = "penultimate_hidden_states"
FACE_EMBEDS = "face_embeds"  # InsightFace's identity embedding (recognition model output)
PENULTIMATE_LAYER = -2  # index, among the encoder's layers, of the one whose hidden states PENULTIMATE holds


@dataclass(frozen=True)
class Encoder:
    name: str
    embeds_width: int  # width of image_embeds (the projection's output); 0 without a projection
    hidden_width: int  # width of the hidden states; 0 for encoders that only give an embedding
    file: str  # the file users download for it, by its usual name ("" where there is none to name)
    positions: int = 0  # patch positions where the widths alone do not pin the model down (SigLIP); 0: any
    face_width: int = 0  # width of the face embedding (InsightFace)
    heads: int = 0  # attention heads of the vision transformer (not recoverable from its weights); 0: not a transformer
    activation: str = "gelu"  # of its MLPs: OpenAI's ViT-L uses quick_gelu, the LAION towers and SigLIP gelu

    def width(self, output: str) -> int:
        """The width of `output` from this encoder; 0 if it does not give that output."""
        return {IMAGE_EMBEDS: self.embeds_width, PENULTIMATE: self.hidden_width, FACE_EMBEDS: self.face_width}.get(output, 0)


CLIP_VIT_H = Encoder("CLIP ViT-H/14", 1024, 1280, "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", heads=16)
CLIP_VIT_BIGG = Encoder("CLIP ViT-bigG/14", 1280, 1664, "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", heads=16)
CLIP_VIT_L = Encoder("CLIP ViT-L/14", 768, 1024, "clip-vit-large-patch14.safetensors", heads=16, activation="quick_gelu")
# so400m at 384 px: (384 / 14)^2 = 729 patches; the 512 px SigLIP has the same widths.
SIGLIP = Encoder("SigLIP so400m/14-384", 0, 1152, "sigclip_vision_patch14_384.safetensors", positions=729, heads=16)
# Every InsightFace recognition model (buffalo_l, antelopev2) embeds faces in 512 dimensions.
INSIGHTFACE = Encoder("InsightFace", 0, 0, "", face_width=512)
ENCODERS = (CLIP_VIT_H, CLIP_VIT_BIGG, CLIP_VIT_L, SIGLIP, INSIGHTFACE)
FACE_WIDTH = INSIGHTFACE.face_width


def encoder_reading(output: str, width: int) -> Encoder | None:
    """The known encoder whose `output` has this width."""
    if not width:
        return None
    return next((encoder for encoder in ENCODERS if encoder.width(output) == width), None)


def encoder_name(output: str, width: int) -> str:
    """For messages: the encoder's name, or what is known about an unknown one."""
    encoder = encoder_reading(output, width)
    if encoder is not None:
        return encoder.name
    if output == IMAGE_EMBEDS:
        return f"a CLIP vision model with embedding width {width}"
    if output == PENULTIMATE:
        return f"an image encoder of hidden width {width}"
    return f"an image encoder with output width {width}"


def vision_model_name(embeds_width: int, hidden_width: int, positions: int = 0) -> str:
    """For messages: the vision model a file or a loaded model is, from its widths (0 embeds: no projection)."""
    if embeds_width:
        return encoder_name(IMAGE_EMBEDS, embeds_width)
    encoder = encoder_reading(PENULTIMATE, hidden_width)
    if encoder is not None and encoder.positions and positions and positions != encoder.positions:
        return f"a {encoder.name.split()[0]} vision model for another resolution ({positions} positions)"
    return encoder_name(PENULTIMATE, hidden_width)


def fits_encoder(encoder: Encoder | None, embeds_width: int, hidden_width: int, positions: int = 0) -> bool:
    """Whether a vision model of these widths is `encoder` (None: an unknown encoder, which any model may be)."""
    if encoder is None:
        return True
    if encoder.positions and positions != encoder.positions:
        return False
    return (encoder.embeds_width, encoder.hidden_width) == (embeds_width, hidden_width)
