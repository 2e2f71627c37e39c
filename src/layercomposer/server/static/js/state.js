// Editor state: the canvas document (format v1, images referred to by server image id), the selection,
// generation settings, undo/redo, and persistence in localStorage so a reload keeps everything.

const STORAGE_KEY = "layercomposer.editor.v1";
const HISTORY_LIMIT = 100;

export function emptyCanvas(width = 256, height = 256) {
  return { version: 1, width, height, prompt: "", layers: [] };
}

function clone(value) {
  return JSON.parse(JSON.stringify(value));
}

export class EditorState extends EventTarget {
  constructor() {
    super();
    this.canvas = emptyCanvas();
    this.selected = null; // layer name
    this.settings = { seed: 0, randomSeed: true, steps: 28, guidance: null, mode: "layered", hardLock: false, strength: 1 };
    this.showGrid = false;
    this.undoStack = [];
    this.redoStack = [];
    this.load();
  }

  // -- persistence ------------------------------------------------------------------------------------------

  load() {
    try {
      const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
      if (saved && saved.canvas && Array.isArray(saved.canvas.layers)) {
        this.canvas = saved.canvas;
        this.selected = saved.selected ?? null;
        Object.assign(this.settings, saved.settings || {});
        this.showGrid = !!saved.showGrid;
      }
    } catch { /* a damaged entry is ignored */ }
  }

  save() {
    const doc = { canvas: this.canvas, selected: this.selected, settings: this.settings, showGrid: this.showGrid };
    localStorage.setItem(STORAGE_KEY, JSON.stringify(doc));
  }

  changed(kind = "canvas") {
    this.save();
    this.dispatchEvent(new CustomEvent("change", { detail: kind }));
  }

  // -- undo / redo ------------------------------------------------------------------------------------------

  /** Record the current canvas before a change, so it can be undone. */
  checkpoint() {
    this.undoStack.push(clone(this.canvas));
    if (this.undoStack.length > HISTORY_LIMIT) this.undoStack.shift();
    this.redoStack = [];
  }

  undo() {
    if (!this.undoStack.length) return;
    this.redoStack.push(clone(this.canvas));
    this.canvas = this.undoStack.pop();
    this.fixSelection();
    this.changed();
  }

  redo() {
    if (!this.redoStack.length) return;
    this.undoStack.push(clone(this.canvas));
    this.canvas = this.redoStack.pop();
    this.fixSelection();
    this.changed();
  }

  fixSelection() {
    if (this.selected && !this.layer(this.selected)) this.selected = null;
  }

  // -- layers -----------------------------------------------------------------------------------------------

  layer(name) {
    return this.canvas.layers.find((l) => l.name === name) || null;
  }

  index(name) {
    return this.canvas.layers.findIndex((l) => l.name === name);
  }

  uniqueName(base) {
    const stem = (base || "layer").replace(/\.[a-z0-9]+$/i, "").slice(0, 60) || "layer";
    let name = stem;
    for (let n = 2; this.layer(name); n++) name = `${stem}-${n}`;
    return name;
  }

  addLayer(layer, { background = false } = {}) {
    this.checkpoint();
    if (background) {
      this.canvas.layers = this.canvas.layers.filter((l) => l.kind !== "background");
      this.canvas.layers.unshift(layer);
    } else {
      this.canvas.layers.push(layer);
    }
    this.selected = layer.name;
    this.changed();
  }

  update(name, fields, { record = true } = {}) {
    const layer = this.layer(name);
    if (!layer) return;
    if (record) this.checkpoint();
    Object.assign(layer, fields);
    if (fields.name && this.selected === name) this.selected = fields.name;
    this.changed();
  }

  remove(name) {
    const i = this.index(name);
    if (i < 0) return;
    this.checkpoint();
    this.canvas.layers.splice(i, 1);
    if (this.selected === name) this.selected = null;
    this.changed();
  }

  duplicate(name) {
    const layer = this.layer(name);
    if (!layer || layer.kind === "background") return;
    const copy = { ...clone(layer), name: this.uniqueName(layer.name), x: (layer.x || 0) + 16, y: (layer.y || 0) + 16 };
    this.checkpoint();
    this.canvas.layers.splice(this.index(name) + 1, 0, copy);
    this.selected = copy.name;
    this.changed();
  }

  /** Move a layer to a new position in the back-to-front list (a background always stays first). */
  move(name, to) {
    const from = this.index(name);
    if (from < 0) return;
    const layers = this.canvas.layers;
    const floor = layers[0] && layers[0].kind === "background" ? 1 : 0;
    if (layers[from].kind === "background") return;
    const target = Math.max(floor, Math.min(layers.length - 1, to));
    if (target === from) return;
    this.checkpoint();
    const [layer] = layers.splice(from, 1);
    layers.splice(target, 0, layer);
    this.changed();
  }

  zorder(name, how) {
    const i = this.index(name);
    const last = this.canvas.layers.length - 1;
    const to = { front: last, forward: i + 1, backward: i - 1, back: 0 }[how];
    this.move(name, to);
  }

  setSize(width, height) {
    this.checkpoint();
    this.canvas.width = width;
    this.canvas.height = height;
    this.changed();
  }

  reset(canvas) {
    this.checkpoint();
    this.canvas = canvas;
    this.selected = null;
    this.changed();
  }

  /** The canvas as the API wants it (format v1; editor-only fields left out). */
  document() {
    const layers = this.canvas.layers.map((l) => {
      const out = { name: l.name, image: l.image, locked: !!l.locked, visible: l.visible !== false };
      if (l.kind === "background") out.kind = "background";
      else Object.assign(out, { x: l.x || 0, y: l.y || 0, scale: l.scale || 1, rotation: l.rotation || 0 });
      return out;
    });
    return { version: 1, width: this.canvas.width, height: this.canvas.height, prompt: this.canvas.prompt || "", layers };
  }
}
