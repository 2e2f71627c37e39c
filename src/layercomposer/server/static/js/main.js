// The editor page: wires the state, the canvas view, the panels and the job API together.

import { api, withToken } from "./api.js";
import { EditorState, emptyCanvas } from "./state.js";
import { CanvasView } from "./view.js";
import { contentBox, entryScale, freeSpot } from "./placement.js";

const $ = (id) => document.getElementById(id);
const state = new EditorState();
const view = new CanvasView($("canvas"), state);
let tokenStats = null;

// Inline SVG icons: they render the same everywhere (no emoji font needed).
const ICONS = {
  locked: '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="5" y="11" width="14" height="10" rx="2"/><path d="M8 11V7a4 4 0 0 1 8 0v4"/></svg>',
  unlocked: '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="5" y="11" width="14" height="10" rx="2"/><path d="M8 11V7a4 4 0 0 1 7.5-2"/></svg>',
  eye: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M2 12s4-7 10-7 10 7 10 7-4 7-10 7S2 12 2 12z"/><circle cx="12" cy="12" r="3"/></svg>',
  hidden: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M2 12s4-7 10-7 10 7 10 7-4 7-10 7S2 12 2 12z"/><path d="M4 20L20 4"/></svg>',
};
let currentJob = null;
let cutoutBusy = false;

// -- helpers ---------------------------------------------------------------------------------------------

function status(element, text, error = false) {
  element.textContent = text;
  element.classList.toggle("error", error);
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

const contentBoxes = new Map(); // image id -> [x0, y0, x1, y1] of its visible pixels

/** The visible part of an image (its alpha bounding box), in image px; null when the image does not load. */
async function imageContent(id) {
  if (!contentBoxes.has(id)) {
    const img = await view.load(id);
    if (!img.naturalWidth) return null;
    contentBoxes.set(id, contentBox(img));
  }
  return contentBoxes.get(id);
}

/** Canvas-px bounds [x0, y0, x1, y1] of a subject layer's visible part (rotation included). */
async function visibleBounds(layer) {
  const box = await imageContent(layer.image);
  const f = box && view.frame(layer);
  if (!f) return null;
  const s = layer.scale || 1;
  const [iw, ih] = view.size(layer);
  const corners = [[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]]
    .map(([ix, iy]) => view.toCanvasPoint(f, (ix - iw / 2) * s, (iy - ih / 2) * s));
  const xs = corners.map((c) => c[0]);
  const ys = corners.map((c) => c[1]);
  return [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)];
}

let additions = Promise.resolve(); // one at a time: each new subject sees the ones added before it

/** Add an image as a layer. A subject enters with its visible part at the height the model saw
 *  characters at in training (`ENTRY_HEIGHT` of the canvas height), centred on `at` (a canvas point) when given,
 *  else at the free spot of the ground that overlaps the other visible subjects least. A background fills. */
function addImageFile(file, options = {}) {
  const run = additions.then(() => addImageFileNow(file, options));
  additions = run.catch(() => {});
  return run;
}

async function addImageFileNow(file, { background = false, at = null } = {}) {
  const info = await api.uploadImage(file, file.name || "image.png");
  const name = state.uniqueName(background ? "background" : file.name || "layer");
  const layer = { name, image: info.id, locked: background, visible: true };
  if (background) {
    layer.kind = "background";
  } else {
    const { width, height } = state.canvas;
    const box = (await imageContent(info.id)) || [0, 0, info.width, info.height];
    const scale = Math.round(entryScale(box, height) * 1000) / 1000;
    const w = (box[2] - box[0]) * scale;
    const h = (box[3] - box[1]) * scale;
    let centre = at;
    if (!centre) {
      const others = state.canvas.layers.filter((l) => l.kind !== "background" && l.visible !== false);
      const occupied = (await Promise.all(others.map(visibleBounds))).filter(Boolean);
      centre = freeSpot(w, h, width, height, occupied);
    }
    // The visible part's centre lands on `centre`.
    Object.assign(layer, {
      scale, rotation: 0,
      x: Math.round(centre[0] - ((box[0] + box[2]) / 2) * scale),
      y: Math.round(centre[1] - ((box[1] + box[3]) / 2) * scale),
    });
  }
  state.addLayer(layer, { background });
}

async function addLibrarySprite(id, at = null) {
  if (!/^c\d{5}$/.test(id)) throw new Error(`no library sprite ${JSON.stringify(id).slice(0, 40)}`);
  const answer = await fetch(withToken(`/api/library/${id}.png`));
  if (!answer.ok) throw new Error(`library sprite ${id}: ${answer.status} ${answer.statusText}`);
  const blob = await answer.blob();
  await addImageFile(new File([blob], `${id}.png`, { type: "image/png" }), { at });
}

// -- layer list ------------------------------------------------------------------------------------------

function renderLayers() {
  const list = $("layer-list");
  list.replaceChildren();
  const perLayer = new Map((tokenStats?.layers || []).map((l) => [l.name, l.tokens]));
  const layers = [...state.canvas.layers].reverse(); // front first, like an image editor
  for (const layer of layers) {
    const li = document.createElement("li");
    li.dataset.name = layer.name;
    li.draggable = layer.kind !== "background";
    li.classList.toggle("selected", layer.name === state.selected);
    li.classList.toggle("hidden-layer", layer.visible === false);
    const thumb = document.createElement("img");
    thumb.src = api.imageUrl(layer.image);
    thumb.alt = "";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = layer.kind === "background" ? `${layer.name} (background)` : layer.name;
    name.title = "double-click to rename";
    name.addEventListener("dblclick", () => rename(layer.name));
    const tokens = document.createElement("span");
    tokens.className = "tokens";
    tokens.textContent = perLayer.has(layer.name) ? `${perLayer.get(layer.name)} tok` : "";
    const lock = document.createElement("button");
    lock.className = "lock";
    lock.innerHTML = layer.locked ? ICONS.locked : ICONS.unlocked;
    lock.title = layer.locked ? "locked: kept exactly (click to unlock)" : "unlocked: adapts to the scene (click to lock)";
    lock.setAttribute("aria-pressed", String(!!layer.locked));
    lock.setAttribute("aria-label", `lock ${layer.name}`);
    lock.addEventListener("click", (e) => {
      e.stopPropagation();
      state.update(layer.name, { locked: !layer.locked });
    });
    const eye = document.createElement("button");
    eye.className = "eye";
    eye.innerHTML = layer.visible === false ? ICONS.hidden : ICONS.eye;
    eye.title = "show / hide";
    eye.setAttribute("aria-pressed", String(layer.visible !== false));
    eye.setAttribute("aria-label", `visibility ${layer.name}`);
    eye.addEventListener("click", (e) => {
      e.stopPropagation();
      state.update(layer.name, { visible: layer.visible === false });
    });
    li.append(thumb, name, tokens, lock, eye);
    li.addEventListener("click", () => {
      state.selected = layer.name;
      state.changed("selection");
    });
    li.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/x-layer", layer.name));
    li.addEventListener("dragover", (e) => {
      e.preventDefault();
      li.classList.add("drop-target");
    });
    li.addEventListener("dragleave", () => li.classList.remove("drop-target"));
    li.addEventListener("drop", (e) => {
      e.preventDefault();
      li.classList.remove("drop-target");
      const dragged = e.dataTransfer.getData("text/x-layer");
      if (dragged && dragged !== layer.name) state.move(dragged, state.index(layer.name));
    });
    list.append(li);
  }
}

function rename(oldName) {
  const name = prompt("Layer name", oldName);
  if (!name || name === oldName) return;
  if (state.layer(name)) {
    alert(`A layer named "${name}" already exists.`);
    return;
  }
  state.update(oldName, { name });
}

function renderProperties() {
  const layer = state.selected && state.layer(state.selected);
  $("properties").hidden = !layer;
  if (view.pick && view.pick.name !== layer?.name) view.cancelPick(); // the box was for another layer
  if (!layer) return;
  const fields = { "prop-name": layer.name, "prop-x": layer.x ?? 0, "prop-y": layer.y ?? 0, "prop-scale": layer.scale ?? 1, "prop-rotation": layer.rotation ?? 0 };
  for (const [id, value] of Object.entries(fields)) {
    if (document.activeElement !== $(id)) $(id).value = value;
  }
  for (const id of ["prop-x", "prop-y", "prop-scale", "prop-rotation"]) $(id).disabled = layer.kind === "background";
  $("prop-locked").checked = !!layer.locked;
  const subject = layer.kind !== "background";
  $("cutout").disabled = $("cutout-box").disabled = cutoutBusy || !subject;
  $("cutout-box").setAttribute("aria-pressed", String(!!view.pick));
  const why = subject ? "" : " (for subject layers: add the photo with Add image…)";
  $("cutout").title = `Cut the person out of this photo (the person of the largest face); Undo brings the photo back${why}`;
}

// -- cut-out ---------------------------------------------------------------------------------------------

/** Layer fields that show the cut-out where its content was: same scale and rotation, its centre at the
 *  canvas point where the centre of that part of the old image was (exact at any rotation). */
function placeCutout(layer, out) {
  const s = layer.scale || 1;
  const { width: w0, height: h0 } = out.source;
  const [ox, oy] = out.offset;
  const f = { cx: (layer.x || 0) + (w0 * s) / 2, cy: (layer.y || 0) + (h0 * s) / 2, theta: ((layer.rotation || 0) * Math.PI) / 180 };
  const [cx, cy] = view.toCanvasPoint(f, (ox + out.width / 2 - w0 / 2) * s, (oy + out.height / 2 - h0 / 2) * s);
  const round = (v) => Math.round(v * 100) / 100;
  return { image: out.id, x: round(cx - (out.width * s) / 2), y: round(cy - (out.height * s) / 2) };
}

async function cutOut(mode, box = null) {
  const layer = state.selected && state.layer(state.selected);
  if (!layer || layer.kind === "background" || cutoutBusy) return;
  const { name, image } = layer;
  cutoutBusy = true;
  renderProperties();
  status($("job-status"), mode === "box" ? `cutting out the box ${box.join(", ")} of ${name}…` : `cutting the person out of ${name}…`);
  try {
    const out = await api.cutout(image, mode === "box" ? { mode, box } : { mode });
    await view.load(out.id);
    const now = state.layer(name);
    if (!now || now.image !== image) {
      status($("job-status"), `cut-out of ${name} not applied: the layer changed meanwhile`, true);
      return;
    }
    state.update(name, placeCutout(now, out)); // one undoable step
    status($("job-status"), `cut out ${out.width} × ${out.height} px of ${name} (${mode === "box" ? "box" : "person"}, ${out.seconds.toFixed(1)} s) · Undo brings the photo back`);
  } catch (err) {
    status($("job-status"), `cut out: ${err.message}`, true);
  } finally {
    cutoutBusy = false;
    renderProperties();
  }
}

function bindCutout() {
  $("cutout").addEventListener("click", () => cutOut("person"));
  $("cutout-box").addEventListener("click", () => {
    if (view.pick) return view.cancelPick();
    const name = state.selected;
    if (!name) return;
    status($("job-status"), `drag a box around the subject on ${name} (Esc cancels)`);
    view.pickBox(name, (box) => {
      renderProperties();
      if (!box) return status($("job-status"), "");
      if (box[2] - box[0] < 8 || box[3] - box[1] < 8) {
        return status($("job-status"), `cut out: the box is ${box[2] - box[0]} × ${box[3] - box[1]} image px; drag a larger one`, true);
      }
      cutOut("box", box);
    });
    renderProperties();
  });
}

function bindProperties() {
  const numeric = { "prop-x": "x", "prop-y": "y", "prop-scale": "scale", "prop-rotation": "rotation" };
  for (const [id, field] of Object.entries(numeric)) {
    $(id).addEventListener("change", () => {
      const value = Number($(id).value);
      if (!Number.isFinite(value) || (field === "scale" && value <= 0)) return renderProperties();
      state.update(state.selected, { [field]: value });
    });
  }
  $("prop-name").addEventListener("change", () => {
    const name = $("prop-name").value.trim();
    if (name && !state.layer(name)) state.update(state.selected, { name });
    else renderProperties();
  });
  $("prop-locked").addEventListener("change", () => state.update(state.selected, { locked: $("prop-locked").checked }));
}

// -- token budget ----------------------------------------------------------------------------------------

const refreshTokens = debounce(async () => {
  if (!state.canvas.layers.length) {
    tokenStats = null;
    $("token-budget").textContent = `tokens: 0 (grid ${state.canvas.height >> 4}×${state.canvas.width >> 4})`;
    renderLayers();
    return;
  }
  try {
    tokenStats = await api.tokens(state.document());
    const all = tokenStats.total + tokenStats.noisy;
    $("token-budget").textContent = `tokens: ${tokenStats.total} kept · ${tokenStats.unpruned_total} unpruned`
      + (maxTokens && all > maxTokens ? ` · ${all} with the noisy ones, above this server's limit of ${maxTokens}` : "");
    $("token-budget").classList.toggle("error", !!maxTokens && all > maxTokens);
    $("token-budget").title = `Kept conditioning tokens after transparent latent pruning (${tokenStats.total}); every cell of every layer would be ${tokenStats.unpruned_total}; a flattened collage ${tokenStats.collage_total}. Grid ${tokenStats.grid[0]}×${tokenStats.grid[1]} cells of 16 px.`;
  } catch (err) {
    tokenStats = null;
    $("token-budget").textContent = `tokens: ${err.message}`;
  }
  renderLayers();
}, 250);

// -- generation ------------------------------------------------------------------------------------------

function readSettings() {
  const s = state.settings;
  s.randomSeed = $("random-seed").checked;
  if (s.randomSeed) {
    s.seed = Math.floor(Math.random() * 2 ** 31);
    $("seed").value = s.seed;
  } else {
    s.seed = Math.max(0, Math.floor(Number($("seed").value) || 0));
  }
  s.steps = Math.floor(Number($("steps").value) || 28);
  if (limits) s.steps = Math.max(limits.steps.min, Math.min(limits.steps.max, s.steps));
  const g = $("guidance").value.trim();
  s.guidance = g === "" ? null : Number(g);
  s.mode = $("mode").value;
  s.instruction = $("instruction").value.trim() || null;
  s.hardLock = $("hard-lock").checked;
  const strength = Number($("strength").value);
  s.strength = Number.isFinite(strength) && strength > 0 ? Math.min(1, strength) : 1;
  $("instruction-row").hidden = s.mode !== "refine";
  state.canvas.prompt = $("prompt").value;
  state.save();
  return { prompt: state.canvas.prompt, seed: s.seed, steps: s.steps, guidance: s.guidance, mode: s.mode,
    instruction: s.mode === "refine" ? s.instruction : null, hard_lock: s.mode !== "refine" && s.hardLock,
    strength: s.mode === "refine" ? 1 : s.strength };
}

async function generate() {
  const settings = readSettings();
  $("generate").disabled = true;
  status($("job-status"), "queued…");
  $("progress").value = 0;
  try {
    const job = await api.createJob(state.document(), settings);
    follow(job.id);
  } catch (err) {
    status($("job-status"), err.message, true);
    $("generate").disabled = false;
  }
}

function follow(id) {
  currentJob = id;
  $("cancel").disabled = false;
  const source = api.events(id);
  const end = () => {
    source.close();
    currentJob = null;
    $("cancel").disabled = true;
    $("generate").disabled = false;
    $("preview").hidden = true;
  };
  source.addEventListener("queued", (e) => status($("job-status"), `queued (position ${JSON.parse(e.data).position})`));
  source.addEventListener("started", () => status($("job-status"), "generating…"));
  source.addEventListener("step", (e) => {
    const d = JSON.parse(e.data);
    $("progress").value = d.step / d.total;
    status($("job-status"), `step ${d.step} / ${d.total}`);
    if (d.preview) {
      $("preview").src = d.preview;
      $("preview").hidden = false;
    }
  });
  source.addEventListener("done", (e) => {
    const d = JSON.parse(e.data);
    end();
    $("progress").value = 1;
    status($("job-status"), `done: ${d.stats.tokens} condition tokens, ${d.stats.seconds.sample.toFixed(1)} s sampling`);
    showResult(d.id);
    refreshHistory();
  });
  source.addEventListener("failed", (e) => {
    end();
    status($("job-status"), `failed: ${JSON.parse(e.data).error}`, true);
  });
  source.addEventListener("cancelled", () => {
    end();
    status($("job-status"), "cancelled");
  });
}

function showResult(id) {
  const url = api.resultUrl(id);
  $("result").src = url;
  $("result").hidden = false;
  $("result").dataset.job = id;
  $("download").href = url;
  $("download").download = `layercomposer-${id}.png`;
  $("download").hidden = false;
}

async function refreshHistory() {
  let jobs = [];
  try {
    jobs = (await api.jobs()).filter((j) => j.status === "done");
  } catch { return; }
  // After a reload the Result panel shows the newest picture (History has it too).
  if (jobs.length && !$("result").dataset.job) showResult(jobs[0].id);
  const list = $("history");
  list.replaceChildren();
  for (const job of jobs.slice(0, 30)) {
    const li = document.createElement("li");
    li.dataset.job = job.id;
    li.title = `${job.settings.prompt || "(no prompt)"}\nseed ${job.settings.seed}, ${job.total} steps, ${job.settings.mode}\nclick to restore this canvas and its settings`;
    const img = document.createElement("img");
    img.src = api.resultUrl(job.id);
    img.alt = "";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `seed ${job.settings.seed}`;
    li.append(img, meta);
    li.addEventListener("click", () => restore(job.id));
    list.append(li);
  }
}

async function restore(id) {
  try {
    const { canvas, settings } = await api.jobCanvas(id);
    state.reset(canvas);
    Object.assign(state.settings, { seed: settings.seed, randomSeed: false, steps: settings.steps ?? state.settings.steps,
      guidance: settings.guidance, mode: settings.mode, hardLock: !!settings.hard_lock,
      strength: settings.strength ?? 1 });
    if (settings.prompt !== null && settings.prompt !== undefined) state.canvas.prompt = settings.prompt;
    state.changed("settings");
    showResult(id);
  } catch (err) {
    status($("job-status"), err.message, true);
  }
}

// -- toolbar ---------------------------------------------------------------------------------------------

function renderSettings() {
  const s = state.settings;
  $("prompt").value = state.canvas.prompt || "";
  $("seed").value = s.seed;
  $("random-seed").checked = s.randomSeed;
  $("steps").value = s.steps;
  $("guidance").value = s.guidance ?? "";
  $("mode").value = ["collage", "refine"].includes(s.mode) ? s.mode : "layered";
  $("instruction").value = s.instruction || "";
  $("hard-lock").checked = !!s.hardLock;
  $("strength").value = s.strength ?? 1;
  $("instruction-row").hidden = $("mode").value !== "refine";
  $("show-grid").checked = state.showGrid;
  const size = `${state.canvas.width}x${state.canvas.height}`;
  const preset = [...$("size-preset").options].some((o) => o.value === size) ? size : "custom";
  $("size-preset").value = preset;
  if (document.activeElement !== $("canvas-width")) $("canvas-width").value = state.canvas.width;
  if (document.activeElement !== $("canvas-height")) $("canvas-height").value = state.canvas.height;
  $("undo").disabled = !state.undoStack.length;
  $("redo").disabled = !state.redoStack.length;
  renderSizeWarning();
}

let trainedSizes = null; // the model's [[width, height], ...] from /api/health; null: the model does not say

/** A non-blocking note when the canvas is not a size the model was trained at. */
function renderSizeWarning() {
  const { width, height } = state.canvas;
  const known = !trainedSizes || trainedSizes.some(([w, h]) => w === width && h === height);
  const sizes = (trainedSizes || []).map(([w, h]) => `${w} × ${h}`).join(", ");
  $("size-warning").hidden = known;
  $("size-warning").textContent = known ? "" : `model trained at ${sizes}`;
  $("size-warning").title = known ? "" : `The model was trained at ${sizes} only; at ${width} × ${height} it may draw worse pictures.`;
}

function bindToolbar() {
  $("new-project").addEventListener("click", () => state.reset(emptyCanvas(state.canvas.width, state.canvas.height)));
  $("open-project").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (!file) return;
    try {
      const { canvas } = await api.openBundle(file);
      state.reset(canvas);
      state.changed("settings");
    } catch (err) {
      status($("job-status"), err.message, true);
    }
  });
  $("save-project").addEventListener("click", async () => {
    try {
      const blob = await api.bundle(state.document());
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = "canvas.lcz";
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    } catch (err) {
      status($("job-status"), err.message, true);
    }
  });
  $("undo").addEventListener("click", () => state.undo());
  $("redo").addEventListener("click", () => state.redo());
  $("size-preset").addEventListener("change", () => {
    const value = $("size-preset").value;
    if (value === "custom") return $("canvas-width").focus();
    const [w, h] = value.split("x").map(Number);
    state.setSize(w, h);
  });
  for (const id of ["canvas-width", "canvas-height"]) {
    $(id).addEventListener("change", () => {
      const w = Math.max(64, Math.min(4096, Math.round(Number($("canvas-width").value) || 256)));
      const h = Math.max(64, Math.min(4096, Math.round(Number($("canvas-height").value) || 256)));
      state.setSize(w, h);
    });
  }
  $("show-grid").addEventListener("change", () => {
    state.showGrid = $("show-grid").checked;
    state.changed("view");
  });
  $("add-image").addEventListener("change", async (e) => {
    const files = [...e.target.files];
    e.target.value = "";
    for (const file of files) {
      try {
        await addImageFile(file);
      } catch (err) {
        status($("job-status"), `${file.name}: ${err.message}`, true);
      }
    }
  });
  $("add-background").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (file) {
      try {
        await addImageFile(file, { background: true });
      } catch (err) {
        status($("job-status"), `${file.name}: ${err.message}`, true);
      }
    }
  });
  for (const [id, how] of [["to-front", "front"], ["forward", "forward"], ["backward", "backward"], ["to-back", "back"]]) {
    $(id).addEventListener("click", () => state.selected && state.zorder(state.selected, how));
  }
  $("duplicate").addEventListener("click", () => state.selected && state.duplicate(state.selected));
  $("delete").addEventListener("click", () => state.selected && state.remove(state.selected));
  $("generate").addEventListener("click", generate);
  $("cancel").addEventListener("click", () => currentJob && api.cancel(currentJob));
  $("prompt").addEventListener("change", () => {
    state.canvas.prompt = $("prompt").value;
    state.save();
  });
  for (const id of ["seed", "steps", "guidance", "mode", "random-seed", "instruction", "hard-lock", "strength"]) $(id).addEventListener("change", readSettings);
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, textarea, select")) return;
    if (e.key === "Escape" && view.pick) return view.cancelPick();
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") {
      e.preventDefault();
      e.shiftKey ? state.redo() : state.undo();
    } else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "y") {
      e.preventDefault();
      state.redo();
    }
  });
}

/** Files and library sprites dropped on the canvas enter with their visible part centred where they fell. */
function bindDrop() {
  const stage = $("stage");
  const accepts = (e) => [...e.dataTransfer.types].some((t) => t === "Files" || t === "text/x-sprite");
  stage.addEventListener("dragover", (e) => {
    if (!accepts(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  stage.addEventListener("drop", async (e) => {
    if (!accepts(e)) return;
    e.preventDefault();
    const { width, height } = state.canvas;
    const [px, py] = view.pointer(e);
    const at = [Math.max(0, Math.min(width, px)), Math.max(0, Math.min(height, py))];
    const sprite = e.dataTransfer.getData("text/x-sprite");
    try {
      if (sprite) {
        await addLibrarySprite(sprite, at);
      }
      // The first file where it fell, any others at free spots.
      const files = [...e.dataTransfer.files];
      for (const [i, file] of files.entries()) await addImageFile(file, { at: i || sprite ? null : at });
    } catch (err) {
      status($("job-status"), err.message, true);
    }
  });
}

async function loadLibrary() {
  let items = [];
  try {
    items = await api.library();
  } catch { return; }
  const box = $("library");
  for (const item of items) {
    const button = document.createElement("button");
    button.title = `${item.id}: ${item.description}`;
    button.dataset.sprite = item.id;
    button.draggable = true; // drop it on the canvas where it should stand
    const img = document.createElement("img");
    img.src = item.url;
    img.alt = item.description;
    button.append(img);
    button.addEventListener("click", () => addLibrarySprite(item.id).catch((err) => status($("job-status"), `${item.id}: ${err.message}`, true)));
    button.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/x-sprite", item.id));
    box.append(button);
  }
}

let maxTokens = null; // the server's --max-tokens: a bigger canvas is refused on Generate
// The generation settings' limits come from the server alone (/api/health `limits`, layercomposer/settings.py),
// so the inputs never offer what the API would refuse; until it answers, the API's own 422 says it.
let limits = null;

function applyLimits(l) {
  if (!l || !l.steps) return;
  limits = l;
  for (const [id, key] of [["steps", "steps"], ["guidance", "guidance"], ["seed", "seed"]]) {
    $(id).min = String(l[key].min);
    $(id).max = String(l[key].max);
  }
  $("prompt").maxLength = l.prompt_chars;
}

async function checkServer() {
  try {
    const h = await api.health();
    trainedSizes = Array.isArray(h.trained_sizes) && h.trained_sizes.length ? h.trained_sizes : null;
    applyLimits(h.limits);
    renderSizeWarning();
    if (h.max_tokens !== maxTokens) {
      maxTokens = h.max_tokens;
      refreshTokens();
    }
    status($("server-status"), h.model_ready ? `model: ${h.model}` : h.model_error ? `model failed: ${h.model_error}` : `loading ${h.model}…`, !!h.model_error);
    const refine = $("mode").querySelector("option[value='refine']");
    refine.disabled = !h.refine_model;
    refine.title = h.refine_model ? `refine with ${h.refine_model}` : "start the server with --refine-model to use it";
    if (!h.model_ready && !h.model_error) setTimeout(checkServer, 1000);
  } catch (err) {
    status($("server-status"), err.status === 401 ? "open the page with ?token=… (the server asks for one)" : `server: ${err.message}`, true);
  }
}

// -- start -----------------------------------------------------------------------------------------------

state.addEventListener("change", (e) => {
  view.draw();
  renderProperties();
  renderSettings();
  if (e.detail === "drag") return; // the list and the budget follow when the drag ends
  renderLayers();
  if (e.detail === "canvas" || e.detail === "settings") refreshTokens();
});

bindToolbar();
bindProperties();
bindCutout();
bindDrop();
renderSettings();
renderProperties();
renderLayers();
view.draw();
refreshTokens();
refreshHistory();
loadLibrary();
checkServer();
window.layercomposer = { state, view }; // for the console (and the browser tests)
