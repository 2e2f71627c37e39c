"""The API's request and answer bodies (pydantic): what a job's settings may be, and the cut-out's shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from ..settings import GUIDANCE, PROMPT_CHARS, SEED, STEPS, STRENGTH


class SettingsIn(BaseModel):
    """Generation settings of a job."""

    prompt: str | None = Field(default=None, max_length=PROMPT_CHARS)
    seed: int = Field(default=0, ge=SEED.low, le=SEED.high)
    steps: int | None = Field(default=None, ge=STEPS.low, le=STEPS.high)
    guidance: float | None = Field(default=None, ge=GUIDANCE.low, le=GUIDANCE.high, allow_inf_nan=False)
    mode: Literal["layered", "unpruned", "collage", "refine"] = "layered"
    instruction: str | None = Field(default=None, max_length=PROMPT_CHARS)
    hard_lock: bool = False
    """Hold the cells that show locked layers only to their latents (model modes; ignored by refine)."""
    strength: float = Field(default=1.0, gt=STRENGTH.low, le=STRENGTH.high, allow_inf_nan=False)
    """Image-to-image from the flattened canvas: the share of the steps run (model modes; 1 = from noise)."""

    @field_validator("prompt", "instruction")
    @classmethod
    def _valid_text(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("not valid Unicode text (a lone surrogate)") from None
        return value


class CanvasJobIn(BaseModel):
    """A job from a canvas JSON whose layer images are ids returned by POST /api/images."""

    canvas: dict[str, Any]
    settings: SettingsIn = SettingsIn()


class CanvasIn(BaseModel):
    canvas: dict[str, Any]


class CutoutIn(BaseModel):
    """What to cut out of a stored image."""

    mode: Literal["person", "box"] = Field(
        default="person",
        description='"person": the person of the largest face (MediaPipe selfie segmentation); '
        '"box": the object inside `box` (OpenCV GrabCut).')
    box: list[float] | None = Field(
        default=None, json_schema_extra={"minItems": 4, "maxItems": 4}, examples=[[270, 330, 512, 512]],
        description="[x0, y0, x1, y1] in the image's own pixels (x1, y1 exclusive), at least 8x8; needed by "
        '"box"; with "person" it limits the search to the box.')


class CutoutOut(BaseModel):
    """The stored cut-out (an RGBA PNG cropped to its content) and where it sits in the source image."""

    id: str = Field(description="image id of the cut-out, for canvas JSON")
    width: int
    height: int
    url: str
    offset: tuple[int, int] = Field(description="[x, y] of the cut-out's top-left corner in the source image")
    method: str = Field(description="what made the mask")
    source: dict[str, Any] = Field(description="the source image: id, width, height")
    seconds: float
