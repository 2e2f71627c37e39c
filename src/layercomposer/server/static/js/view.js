// The canvas view: draws the layers with the canvas format's transform (x, y = top-left of the scaled,
// unrotated image; rotation counter-clockwise on screen about its centre) and handles direct manipulation:
// drag to move, corner handles to scale (aspect kept, centre fixed), the top handle to rotate; and, for
// "Cut out (box)", a box dragged on one layer (in that layer's own axes, so it is exact at any rotation).

import { api } from "./api.js";

const HANDLE = 7; // handle half-size in screen pixels
const ROTATE_OFFSET = 28; // rotation handle distance above the top edge, screen pixels
const LOCKED = "#3ccf6e";
const UNLOCKED = "#ff9a1f";

export class CanvasView {
  constructor(element, state) {
    this.el = element;
    this.ctx = element.getContext("2d");
    this.state = state;
    this.images = new Map(); // image id -> HTMLImageElement
    this.drag = null;
    this.pick = null; // box picking: { name, done, f, a, b, dragging }
    element.addEventListener("pointerdown", (e) => this.onDown(e));
    element.addEventListener("pointermove", (e) => this.onMove(e));
    element.addEventListener("pointerup", (e) => this.onUp(e));
    element.addEventListener("pointercancel", (e) => (this.pick ? this.cancelPick() : this.onUp(e)));
    element.addEventListener("keydown", (e) => this.onKey(e));
    new ResizeObserver(() => this.draw()).observe(element.parentElement);
  }

  // -- images -----------------------------------------------------------------------------------------------

  image(id) {
    let img = this.images.get(id);
    if (!img) {
      img = new Image();
      img.onload = () => this.draw();
      img.src = api.imageUrl(id);
      this.images.set(id, img);
    }
    return img.complete && img.naturalWidth ? img : null;
  }

  /** The image of an id, once it has loaded (for swapping a layer's image without a blank frame). */
  load(id) {
    const ready = this.image(id);
    if (ready) return Promise.resolve(ready);
    const img = this.images.get(id);
    return img.decode().then(() => img, () => img);
  }

  size(layer) {
    const img = this.image(layer.image);
    return img ? [img.naturalWidth, img.naturalHeight] : null;
  }

  // -- geometry (canvas pixels) -----------------------------------------------------------------------------

  /** Centre, scaled size and rotation (radians, counter-clockwise) of a subject layer. */
  frame(layer) {
    const size = this.size(layer);
    if (!size) return null;
    const s = layer.scale || 1;
    const w = size[0] * s;
    const h = size[1] * s;
    return { cx: (layer.x || 0) + w / 2, cy: (layer.y || 0) + h / 2, w, h, theta: ((layer.rotation || 0) * Math.PI) / 180 };
  }

  /** Canvas point -> the layer's unrotated frame, relative to its centre. */
  toLocal(f, px, py) {
    const dx = px - f.cx;
    const dy = py - f.cy;
    // Screen-CCW rotation by theta maps (u, v) to (u cos + v sin, -u sin + v cos); invert it.
    const c = Math.cos(f.theta);
    const s = Math.sin(f.theta);
    return [dx * c - dy * s, dx * s + dy * c];
  }

  toCanvasPoint(f, u, v) {
    const c = Math.cos(f.theta);
    const s = Math.sin(f.theta);
    return [f.cx + u * c + v * s, f.cy - u * s + v * c];
  }

  pointer(e) {
    const rect = this.el.getBoundingClientRect();
    const k = this.state.canvas.width / rect.width;
    return [(e.clientX - rect.left) * k, (e.clientY - rect.top) * k, k];
  }

  handles(f, k) {
    const corners = [[-1, -1], [1, -1], [1, 1], [-1, 1]].map(([a, b]) => ({
      kind: "scale", at: this.toCanvasPoint(f, (a * f.w) / 2, (b * f.h) / 2),
    }));
    const top = { kind: "rotate", at: this.toCanvasPoint(f, 0, -f.h / 2 - ROTATE_OFFSET * k) };
    return [...corners, top];
  }

  hitLayer(px, py) {
    const layers = this.state.canvas.layers;
    for (let i = layers.length - 1; i >= 0; i--) {
      const layer = layers[i];
      if (layer.visible === false || layer.kind === "background") continue;
      const f = this.frame(layer);
      if (!f) continue;
      const [u, v] = this.toLocal(f, px, py);
      if (Math.abs(u) <= f.w / 2 && Math.abs(v) <= f.h / 2) return layer;
    }
    return null;
  }

  // -- box picking ("Cut out (box)") ------------------------------------------------------------------------

  /** Let the user drag a box on layer `name`; `done` gets it in the image's own pixels [x0, y0, x1, y1], or
   *  null when cancelled. The box follows the layer's axes (drawn rotated with it), clipped to the layer. */
  pickBox(name, done) {
    this.cancelPick();
    this.pick = { name, done, f: null, a: null, b: null, dragging: false };
    this.el.style.cursor = "crosshair";
    this.draw();
  }

  cancelPick() {
    const pick = this.pick;
    if (!pick) return;
    this.pick = null;
    this.el.style.cursor = "default";
    this.draw();
    pick.done(null);
  }

  /** A canvas point in the picked layer's frame (relative to its centre), clipped to the layer. */
  pickPoint(f, px, py) {
    const [u, v] = this.toLocal(f, px, py);
    return [Math.max(-f.w / 2, Math.min(f.w / 2, u)), Math.max(-f.h / 2, Math.min(f.h / 2, v))];
  }

  /** The picked box in the layer image's pixels. */
  pickedBox(layer, f, a, b) {
    const s = layer.scale || 1;
    const [iw, ih] = this.size(layer);
    const px = (u) => Math.max(0, Math.min(iw, Math.round((u + f.w / 2) / s)));
    const py = (v) => Math.max(0, Math.min(ih, Math.round((v + f.h / 2) / s)));
    return [px(Math.min(a[0], b[0])), py(Math.min(a[1], b[1])), px(Math.max(a[0], b[0])), py(Math.max(a[1], b[1]))];
  }

  drawPick(ctx, k) {
    const { f, a, b } = this.pick || {};
    if (!f || !a || !b) return;
    const corners = [[a[0], a[1]], [b[0], a[1]], [b[0], b[1]], [a[0], b[1]]].map(([u, v]) => this.toCanvasPoint(f, u, v));
    ctx.save();
    ctx.lineWidth = 1.5 * k;
    for (const [colour, offset] of [["#000", 0], ["#fff", 4 * k]]) {
      ctx.strokeStyle = colour;
      ctx.setLineDash([4 * k, 4 * k]);
      ctx.lineDashOffset = offset;
      ctx.beginPath();
      corners.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
      ctx.stroke();
    }
    ctx.restore();
  }

  // -- drawing ----------------------------------------------------------------------------------------------

  /** Display size: the whole canvas fits the stage (small canvases zoomed up); returns screen px per canvas px. */
  fit() {
    const { width, height } = this.state.canvas;
    const stage = this.el.parentElement;
    const availW = Math.max(64, stage.clientWidth - 32);
    const availH = Math.max(64, stage.clientHeight - 56);
    const zoom = Math.min(availW / width, availH / height, 4);
    const cssW = Math.round(width * zoom);
    const cssH = Math.round(height * zoom);
    this.el.style.width = `${cssW}px`;
    this.el.style.height = `${cssH}px`;
    // The backing store matches the screen, so outlines and handles stay sharp at any zoom.
    const dpr = window.devicePixelRatio || 1;
    if (this.el.width !== Math.round(cssW * dpr) || this.el.height !== Math.round(cssH * dpr)) {
      this.el.width = Math.round(cssW * dpr);
      this.el.height = Math.round(cssH * dpr);
    }
    return cssW / width;
  }

  draw() {
    const { width, height, layers } = this.state.canvas;
    const zoom = this.fit();
    const ctx = this.ctx;
    const k = 1 / zoom; // canvas px per screen px
    ctx.save();
    ctx.setTransform(this.el.width / width, 0, 0, this.el.height / height, 0, 0);
    ctx.clearRect(0, 0, width, height);
    this.drawChecker(ctx, width, height);
    for (const layer of layers) {
      if (layer.visible === false) continue;
      const img = this.image(layer.image);
      if (!img) continue;
      if (layer.kind === "background") {
        const s = Math.max(width / img.naturalWidth, height / img.naturalHeight);
        const w = img.naturalWidth * s;
        const h = img.naturalHeight * s;
        ctx.drawImage(img, (width - w) / 2, (height - h) / 2, w, h);
        continue;
      }
      const f = this.frame(layer);
      ctx.save();
      ctx.translate(f.cx, f.cy);
      ctx.rotate(-f.theta); // the 2D context turns clockwise on screen for positive angles
      ctx.drawImage(img, -f.w / 2, -f.h / 2, f.w, f.h);
      ctx.restore();
    }
    if (this.state.showGrid) this.drawGrid(ctx, width, height, k);
    for (const layer of layers) {
      if (layer.visible === false) continue;
      this.drawMarks(ctx, layer, k);
    }
    this.drawPick(ctx, k);
    ctx.restore();
  }

  drawChecker(ctx, width, height) {
    const cell = 8;
    ctx.fillStyle = "#c8c8c8";
    ctx.fillRect(0, 0, width, height);
    ctx.fillStyle = "#e4e4e4";
    for (let y = 0; y < height; y += cell) {
      for (let x = ((y / cell) % 2) * cell; x < width; x += 2 * cell) ctx.fillRect(x, y, cell, cell);
    }
  }

  drawGrid(ctx, width, height, k) {
    ctx.strokeStyle = "rgba(79, 156, 247, 0.45)";
    ctx.lineWidth = k;
    ctx.beginPath();
    for (let x = 16; x < width; x += 16) { ctx.moveTo(x, 0); ctx.lineTo(x, height); }
    for (let y = 16; y < height; y += 16) { ctx.moveTo(0, y); ctx.lineTo(width, y); }
    ctx.stroke();
  }

  drawMarks(ctx, layer, k) {
    const selected = layer.name === this.state.selected;
    if (layer.kind === "background") {
      if (layer.locked) this.drawLock(ctx, 6 * k, 6 * k, k);
      return;
    }
    const f = this.frame(layer);
    if (!f) return;
    const corners = [[-1, -1], [1, -1], [1, 1], [-1, 1]].map(([a, b]) => this.toCanvasPoint(f, (a * f.w) / 2, (b * f.h) / 2));
    ctx.save();
    ctx.lineWidth = (selected ? 2 : 1.5) * k;
    ctx.strokeStyle = layer.locked ? LOCKED : selected ? "#4f9cf7" : "rgba(255,154,31,0.7)";
    if (!layer.locked && !selected) ctx.setLineDash([5 * k, 4 * k]);
    ctx.beginPath();
    corners.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.closePath();
    ctx.stroke();
    ctx.restore();
    if (layer.locked) this.drawLock(ctx, corners[0][0] + 3 * k, corners[0][1] + 3 * k, k);
    if (selected) {
      ctx.save();
      ctx.fillStyle = "#fff";
      ctx.strokeStyle = "#4f9cf7";
      ctx.lineWidth = 1.5 * k;
      const top = this.toCanvasPoint(f, 0, -f.h / 2);
      for (const h of this.handles(f, k)) {
        if (h.kind === "rotate") {
          ctx.beginPath();
          ctx.moveTo(top[0], top[1]);
          ctx.lineTo(h.at[0], h.at[1]);
          ctx.stroke();
          ctx.beginPath();
          ctx.arc(h.at[0], h.at[1], HANDLE * k, 0, 2 * Math.PI);
        } else {
          ctx.beginPath();
          ctx.rect(h.at[0] - HANDLE * k, h.at[1] - HANDLE * k, 2 * HANDLE * k, 2 * HANDLE * k);
        }
        ctx.fill();
        ctx.stroke();
      }
      ctx.restore();
    }
  }

  /** A small padlock badge: the lock is visible on the canvas, not only in the list. */
  drawLock(ctx, x, y, k) {
    const s = 14 * k;
    ctx.save();
    ctx.fillStyle = LOCKED;
    ctx.strokeStyle = "#063";
    ctx.lineWidth = 1.2 * k;
    ctx.beginPath();
    ctx.roundRect(x, y + s * 0.45, s, s * 0.6, 2 * k);
    ctx.fill();
    ctx.stroke();
    ctx.beginPath();
    ctx.arc(x + s / 2, y + s * 0.45, s * 0.3, Math.PI, 0);
    ctx.stroke();
    ctx.restore();
  }

  // -- interaction ------------------------------------------------------------------------------------------

  onDown(e) {
    this.el.focus();
    const [px, py, k] = this.pointer(e);
    if (this.pick) {
      const layer = this.state.layer(this.pick.name);
      const f = layer && this.frame(layer);
      if (!f) return;
      this.el.setPointerCapture(e.pointerId);
      Object.assign(this.pick, { f, a: this.pickPoint(f, px, py), dragging: true });
      this.pick.b = this.pick.a;
      this.draw();
      return;
    }
    const selected = this.state.selected && this.state.layer(this.state.selected);
    if (selected && selected.kind !== "background") {
      const f = this.frame(selected);
      if (f) {
        for (const h of this.handles(f, k)) {
          if (Math.hypot(px - h.at[0], py - h.at[1]) <= HANDLE * k * 1.6) {
            this.start(e, selected, h.kind, f, px, py);
            return;
          }
        }
      }
    }
    const hit = this.hitLayer(px, py);
    this.state.selected = hit ? hit.name : null;
    this.state.changed("selection");
    if (hit) this.start(e, hit, "move", this.frame(hit), px, py);
  }

  start(e, layer, kind, f, px, py) {
    this.el.setPointerCapture(e.pointerId);
    this.state.checkpoint();
    this.drag = {
      kind, name: layer.name, px, py, x: layer.x || 0, y: layer.y || 0, scale: layer.scale || 1,
      rotation: layer.rotation || 0, f, dist: Math.hypot(px - f.cx, py - f.cy),
      angle: Math.atan2(-(py - f.cy), px - f.cx),
    };
  }

  onMove(e) {
    if (this.pick) {
      if (this.pick.dragging) {
        const [px, py] = this.pointer(e);
        this.pick.b = this.pickPoint(this.pick.f, px, py);
        this.draw();
      }
      return;
    }
    if (!this.drag) {
      const [px, py] = this.pointer(e);
      this.el.style.cursor = this.hitLayer(px, py) ? "move" : "default";
      return;
    }
    const d = this.drag;
    const [px, py] = this.pointer(e);
    const layer = this.state.layer(d.name);
    if (!layer) return;
    if (d.kind === "move") {
      layer.x = Math.round(d.x + px - d.px);
      layer.y = Math.round(d.y + py - d.py);
    } else if (d.kind === "scale") {
      const size = this.size(layer);
      const scale = Math.max(0.02, (d.scale * Math.hypot(px - d.f.cx, py - d.f.cy)) / Math.max(1, d.dist));
      layer.scale = Math.round(scale * 1000) / 1000;
      layer.x = Math.round((d.f.cx - (size[0] * layer.scale) / 2) * 100) / 100;
      layer.y = Math.round((d.f.cy - (size[1] * layer.scale) / 2) * 100) / 100;
    } else if (d.kind === "rotate") {
      // Angle of the pointer about the centre, y up, so counter-clockwise is positive; the handle starts
      // straight above the centre (90 degrees).
      const angle = (Math.atan2(-(py - d.f.cy), px - d.f.cx) * 180) / Math.PI;
      let rotation = angle - 90;
      if (e.shiftKey) rotation = Math.round(rotation / 15) * 15;
      layer.rotation = Math.round((((rotation + 540) % 360) - 180) * 10) / 10;
    }
    this.state.changed("drag");
  }

  onUp(e) {
    if (this.pick?.dragging) {
      const { name, done, f, a } = this.pick;
      const [px, py] = this.pointer(e);
      const b = this.pickPoint(f, px, py);
      this.pick = null;
      this.el.releasePointerCapture?.(e.pointerId);
      this.el.style.cursor = "default";
      this.draw();
      const layer = this.state.layer(name);
      done(layer && this.size(layer) ? this.pickedBox(layer, f, a, b) : null);
      return;
    }
    if (!this.drag) return;
    this.drag = null;
    this.el.releasePointerCapture?.(e.pointerId);
    this.state.changed("canvas");
  }

  onKey(e) {
    if (this.pick && e.key === "Escape") {
      e.preventDefault();
      this.cancelPick();
      return;
    }
    const layer = this.state.selected && this.state.layer(this.state.selected);
    if (!layer) return;
    const step = e.shiftKey ? 10 : 1;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (moves[e.key] && layer.kind !== "background") {
      e.preventDefault();
      const [dx, dy] = moves[e.key];
      this.state.update(layer.name, { x: (layer.x || 0) + dx, y: (layer.y || 0) + dy });
    } else if (e.key === "Delete" || e.key === "Backspace") {
      e.preventDefault();
      this.state.remove(layer.name);
    }
  }
}
