"""Canvas routes: images (upload, cut-out, fetch), token counts, bundles, and the sprite library."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import FileResponse, Response

from ...canvas import load_bundle, save_bundle_bytes
from ..responses import ApiError
from ..schemas import CanvasIn, CutoutIn, CutoutOut
from ..services import Auth, Svc

router = APIRouter()


@router.post("/api/images", tags=["canvas"])
async def upload_image(_: Auth, svc: Svc,
                       file: Annotated[UploadFile, File(description="PNG, WebP, JPEG...")]) -> dict:
    """Store an image (checked: an image, at most 40 MP); returns its id for canvas JSON."""
    data = await svc.read_upload(file, f"image {file.filename!r}")
    image_id, image = svc.store.put(data, f"image {file.filename!r}")
    w, h = image.size
    return {"id": image_id, "width": w, "height": h, "url": f"/api/images/{image_id}"}


@router.post("/api/images/{image_id}/cutout", tags=["canvas"], response_model=CutoutOut,
             summary="Cut the subject out of a stored image",
             responses={404: {"description": "no such image"},
                        422: {"description": "bad box, or nothing found (no person: send a box)"},
                        429: {"description": "too many cut-outs waiting"},
                        501: {"description": "the photo extra is not installed"}})
async def cutout_image(_: Auth, svc: Svc, image_id: str, body: CutoutIn) -> dict[str, Any]:
    """The editor's **Cut out** button. `{"mode": "person"}` keeps the person of the largest face
    (MediaPipe selfie segmentation); `{"mode": "box", "box": [x0, y0, x1, y1]}` the object inside the box
    (OpenCV GrabCut), the box in the image's own pixels. Alpha edges are cleaned and feathered, a source
    that is already transparent stays so, and the result is cropped to its content and stored like an
    upload: the answer has its id and size, plus `offset`, where its top-left corner lies in the source
    image (place it there to keep the cut content where it was).

    Errors: 404 unknown image; 422 bad box, or nothing found (no face, so no person: draw a box);
    501 when the photo tools are not installed (`pip install "layercomposer[photo]"`). Runs in a worker
    thread of its own (about a second for a 512 px photo), never in the generation queue.
    """
    return await svc.cutouts.cut(image_id, body.mode, body.box)


@router.get("/api/images/{image_id}", tags=["canvas"])
def get_image(_: Auth, svc: Svc, image_id: str) -> FileResponse:
    path = svc.store.path(image_id)
    if not path.is_file():
        raise ApiError(404, f"no image {image_id!r}")
    return FileResponse(path, headers={"Cache-Control": "max-age=31536000, immutable"})


@router.post("/api/tokens", tags=["canvas"])
def tokens(_: Auth, svc: Svc, body: CanvasIn) -> dict[str, Any]:
    """Conditioning token statistics of a canvas (the code of `layercomposer tokens`)."""
    return svc.canvases.plan(svc.canvases.from_json(body.canvas), "layered").as_dict()


@router.post("/api/bundle", tags=["canvas"])
def bundle(_: Auth, svc: Svc, body: CanvasIn) -> Response:
    """The canvas as an `.lcz` bundle (save project)."""
    data = save_bundle_bytes(svc.canvases.from_json(body.canvas))
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="canvas.lcz"'})


@router.post("/api/open", tags=["canvas"])
async def open_bundle(_: Auth, svc: Svc, bundle: Annotated[UploadFile, File(description=".lcz bundle")]) -> dict:
    """Read an `.lcz` bundle; returns its canvas JSON with the images stored and referred to by id."""
    canvas = load_bundle(await svc.read_upload(bundle, "bundle"), f"bundle {bundle.filename!r}")
    return {"canvas": svc.canvases.to_json(canvas)}


library_router = APIRouter()


@library_router.get("/api/library", tags=["canvas"])
def library(_: Auth, svc: Svc) -> list[dict[str, Any]]:
    """Sprites of held-out identities (never seen in training), to compose with."""
    return svc.library.entries()


@library_router.get("/api/library/{sprite}.png", tags=["canvas"])
def library_sprite(_: Auth, svc: Svc, sprite: str) -> Response:
    return Response(svc.library.sprite_png(sprite), media_type="image/png", headers={"Cache-Control": "max-age=86400"})
