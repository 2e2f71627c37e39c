"""A bounded fuzz of every route (issue 31, "Done when"): at least 1,000 malformed requests from fixed seeds,
and not one answer is a 5xx; every JSON error answer is `{"error": ...}`."""

from __future__ import annotations

import io
import json
import random
import time
import zipfile

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from layercomposer.server.app import ServerSettings, create_app

REQUESTS = 1200


def png(w: int = 24, h: int = 24, rgba=(220, 40, 40, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (w, h), rgba).save(buf, "PNG")
    return buf.getvalue()


NASTY_VALUES = [
    None, True, 0, -1, 10**400, -(10**400), 1e308, -1e308, 0.5, "", "x", "\udcff", "\ud800x", "a\x00b",
    "../../etc/passwd", "/dev/zero", "c00001\n", "x" * 5000, [], {}, [1, 2], {"a": "b"}, 2**63, 2**64 + 1,
    "NaN", "Infinity", "-0", "\u202e", "ﬁ", "😀" * 50,
]


def nested(depth: int) -> object:
    value: object = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


class Fuzzer:
    def __init__(self, seed: int, image_id: str, job_id: str) -> None:
        self.rng = random.Random(seed)
        self.image_id = image_id
        self.job_id = job_id

    def value(self) -> object:
        r = self.rng.random()
        if r < 0.08:
            return nested(self.rng.choice((40, 900, 3000)))
        return self.rng.choice(NASTY_VALUES)

    def canvas(self) -> dict:
        layer: dict = {"name": "a", "image": self.image_id, "x": 8, "y": 8, "locked": True, "meta": {"k": 1}}
        doc: dict = {"version": 1, "width": 64, "height": 64, "prompt": "p", "meta": {}}
        for _ in range(self.rng.randint(0, 2)):
            layer[self.rng.choice(["name", "image", "x", "y", "scale", "rotation", "locked", "visible", "kind",
                                   "meta", "bogus"])] = self.value()
        doc["layers"] = [dict(layer, name=f"l{i}") if i else layer for i in range(self.rng.choice((1, 1, 2, 65)))]
        for _ in range(self.rng.randint(0, 2)):
            doc[self.rng.choice(["version", "width", "height", "prompt", "layers", "meta", "bogus"])] = self.value()
        return doc

    def json_body(self) -> bytes:
        r = self.rng.random()
        if r < 0.5:
            body: object = {"canvas": self.canvas()}
            if self.rng.random() < 0.5:
                body["settings"] = {self.rng.choice(["prompt", "seed", "steps", "guidance", "mode", "instruction",
                                                     "hard_lock", "strength", "bogus"]): self.value(), "steps": 1}
        elif r < 0.65:
            body = self.value()
        else:
            raw = self.dumps({"canvas": self.canvas()})
            cut = self.rng.randrange(len(raw) + 1)
            return raw[:cut] + bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(8)))
        return self.dumps(body)

    @staticmethod
    def dumps(body: object) -> bytes:
        try:
            return json.dumps(body).encode()
        except (RecursionError, ValueError):  # the 3000-deep values: written out by hand
            return b'{"canvas": {"meta": ' + b"[" * 3000 + b"]" * 3000 + b"}}"

    def bundle(self) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            doc = self.canvas()
            for layer in doc.get("layers", []) if isinstance(doc.get("layers"), list) else []:
                if isinstance(layer, dict):
                    layer["image"] = "images/a.png"
            zf.writestr("canvas.json", self.dumps(doc))
            zf.writestr("images/a.png", png() + (b"\0" * self.rng.choice((0, 0, 100))))
        data = bytearray(buf.getvalue())
        for _ in range(self.rng.choice((0, 0, 1, 3))):
            data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        return bytes(data)

    def junk(self, n: int = 64) -> bytes:
        return bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(n)))

    def segment(self) -> str:
        return self.rng.choice([self.image_id, self.job_id, "0123456789abcdef", "0123456789abcdef%0a", "..%2F..",
                                "%00", "x" * 300, "%ff%fe", self.image_id + "%0a", "c00001", "c00001%0a", "."])

    def request(self, c: TestClient):
        s, rng = self.segment, self.rng
        headers = {}
        if rng.random() < 0.1:
            headers["content-type"] = rng.choice(["application/json", "text/plain", "multipart/form-data",
                                                  "multipart/form-data; boundary=zz", "application/json; x"])
        if rng.random() < 0.1:
            headers[rng.choice(["last-event-id", "authorization", "range", "if-none-match"])] = \
                rng.choice(["1" * 40, "-1", "Bearer x", "bytes=5-1", "\x7f", "99999999999", "\xb2", "1\xb9"]
                           ).encode("latin-1")  # superscript digits: str.isdigit() says yes, int() says no
        route = rng.randrange(17)
        if route == 0:
            return c.post("/api/images", files={"file": ("a.png", rng.choice([self.junk(), png()[:50],
                                                                              png() + b"\0" * 9, b""]))},
                          headers=headers)
        if route == 1:
            return c.post(f"/api/images/{s()}/cutout", content=self.json_body(),
                          headers={"content-type": "application/json"} | headers)
        if route == 2:
            return c.get(f"/api/images/{s()}", headers=headers)
        if route == 3:
            return c.post("/api/tokens", content=self.json_body(),
                          headers={"content-type": "application/json"} | headers)
        if route == 4:
            return c.post("/api/bundle", content=self.json_body(),
                          headers={"content-type": "application/json"} | headers)
        if route == 5:
            return c.post("/api/open", files={"bundle": ("b.lcz", rng.choice([self.bundle(), self.junk()]))},
                          headers=headers)
        if route == 6:
            return c.post("/api/jobs", content=self.json_body(),
                          headers={"content-type": "application/json"} | headers)
        if route == 7:
            kind = rng.random()
            if kind < 0.4:
                return c.post("/api/jobs", files={"bundle": ("b.lcz", self.bundle())},
                              data={"settings": rng.choice(['{"steps": 1}', "{", "[" * 3000, '{"seed": -1}'])})
            return c.post("/api/jobs", files=[("files", ("a.png", rng.choice([png(), self.junk()])))],
                          data={"canvas": self.json_body().decode("utf-8", "replace"),
                                "settings": rng.choice(['{"steps": 1}', "nope", '{"mode": "refine"}'])})
        if route == 8:
            return c.get(rng.choice(["/api/jobs", "/api/health", "/api/library", "/openapi.json", "/"]),
                         headers=headers)
        if route == 9:
            return c.get(f"/api/jobs/{s()}", headers=headers)
        if route == 10:
            return c.post(f"/api/jobs/{s()}/cancel", content=self.junk(), headers=headers)
        if route == 11:
            return c.get(f"/api/jobs/{s()}/events", headers=headers)
        if route == 12:
            return c.get(f"/api/jobs/{s()}/{rng.choice(['result.png', 'canvas.lcz', 'canvas'])}", headers=headers)
        if route == 13:
            return c.get(f"/api/library/{s()}.png", headers=headers)
        if route == 14:
            return c.get(rng.choice(["/static/js/main.js", "/static/%2e%2e/app.py", "/static/..%2Fapp.py",
                                     "/static/nope.js", "/docs", "/redoc"]), headers=headers)
        if route == 15:
            method = rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
            return c.request(method, rng.choice(["/api/jobs", "/api/images", "/", f"/api/jobs/{s()}"]),
                             content=self.junk(), headers=headers)
        return c.post(rng.choice(["/api/tokens", "/api/jobs", "/api/bundle"]), content=self.junk(200),
                      headers={"content-type": "application/json"} | headers)


@pytest.fixture(scope="module")
def pipe():
    from layercomposer.pipeline import LayerComposerPipeline

    return LayerComposerPipeline.from_pretrained("tiny-random")


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_every_route_no_5xx(tmp_path, pipe, seed):
    settings = ServerSettings(model="tiny-random", outputs=tmp_path / "outputs", max_queue=4, max_tokens=1024)
    with TestClient(create_app(settings, load_pipeline=lambda: pipe), raise_server_exceptions=False) as c:
        image_id = c.post("/api/images", files={"file": ("a.png", png())}).json()["id"]
        job = c.post("/api/jobs", json={"canvas": {"version": 1, "width": 64, "height": 64, "layers": [
            {"name": "a", "image": image_id}]}, "settings": {"steps": 1}}).json()
        for _ in range(200):
            if c.get(f"/api/jobs/{job['id']}").json()["status"] == "done":
                break
            time.sleep(0.05)
        fuzz = Fuzzer(seed, image_id, job["id"])
        failures, answered = [], 0
        for i in range(REQUESTS // 2):
            r = fuzz.request(c)
            answered += 1
            if r.status_code >= 500:
                failures.append(f"#{i} {r.request.method} {r.request.url.path} -> {r.status_code} {r.text[:200]}")
            elif (r.status_code >= 400 and r.request.method != "HEAD"
                  and r.headers.get("content-type", "").startswith("application/json")):
                try:
                    body = r.json()
                except ValueError:
                    body = None
                if not isinstance(body, dict) or set(body) != {"error"}:
                    failures.append(f"#{i} {r.request.method} {r.request.url.path}: error shape {r.text[:200]}")
        # Every job the fuzz queued ends, and its answers still encode.
        for listed in c.get("/api/jobs").json():
            assert c.get(f"/api/jobs/{listed['id']}").status_code == 200
        assert answered == REQUESTS // 2
        assert not failures, f"{len(failures)} bad answers, e.g.\n" + "\n".join(failures[:10])
