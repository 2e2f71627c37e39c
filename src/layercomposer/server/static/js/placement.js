// Where a new subject layer enters and how big: at the size the model saw characters in training, and at a
// free spot of the ground (not stacked on the ones already there). Pure geometry, no DOM state.

/** Entry height of a subject's visible content, as a share of the canvas height: the median height of a
 *  character layer's alpha bounding box (alpha > 0) over the picture's height in the sprites world the demo
 *  models were trained on. Measured on 1493 character layers of 200 scenes (issue 30, item 7):
 *    python -c "import numpy as np; from layercomposer.world import generate_scene; hs = [];
 *      [hs.append((lambda ys: (ys.max() - ys.min() + 1) / 256)(np.nonzero(np.asarray(l.getchannel('A')) > 0)[0]))
 *       for i in range(200) for im in generate_scene(i, seed=0, size=256).images for l in im.layers.values()];
 *      print(len(hs), np.percentile(hs, [5, 25, 50, 75, 95]))"
 *  gave 5/25/50/75/95th percentiles 0.195 / 0.242 / 0.285 / 0.340 / 0.434 (bodies are 0.17-0.36 of the
 *  picture; arms and hats reach beyond), and box centres at 0.58-0.83 of the height (they stand on the ground). */
export const ENTRY_HEIGHT = 0.285;

/** Characters stand in the lower two thirds of the picture: free spots are looked for there. */
export const GROUND_TOP = 1 / 3;
const GRID_COLUMNS = 17;
const GRID_ROWS = 9;

/** The bounding box of an image's visible pixels (alpha > 0), in image pixels [x0, y0, x1, y1]; the whole
 *  image when nothing is visible or the pixels cannot be read. */
export function contentBox(img) {
  const w = img.naturalWidth;
  const h = img.naturalHeight;
  const whole = [0, 0, w, h];
  if (!w || !h) return whole;
  let data;
  try {
    const c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0);
    data = ctx.getImageData(0, 0, w, h).data;
  } catch {
    return whole;
  }
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (data[(y * w + x) * 4 + 3] === 0) continue;
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
    }
  }
  return x1 < 0 ? whole : [x0, y0, x1 + 1, y1 + 1];
}

/** The scale that makes a content box `ENTRY_HEIGHT` of the canvas height. */
export function entryScale(box, canvasHeight) {
  return (ENTRY_HEIGHT * canvasHeight) / Math.max(1, box[3] - box[1]);
}

function overlap(a, b) {
  const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]);
  const h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
  return w > 0 && h > 0 ? w * h : 0;
}

/** The centre for a new w x h box on a width x height canvas: among a grid of positions over the lower two
 *  thirds, the one whose box overlaps the `occupied` boxes ([x0, y0, x1, y1], canvas px) least; ties go to the
 *  one nearest the middle of that band. */
export function freeSpot(w, h, width, height, occupied) {
  const top = GROUND_TOP * height;
  const span = (lo, hi, n) => (hi <= lo ? [(lo + hi) / 2] : Array.from({ length: n }, (_, i) => lo + ((hi - lo) * i) / (n - 1)));
  const xs = span(w / 2, width - w / 2, GRID_COLUMNS);
  const ys = span(top + h / 2, height - h / 2, GRID_ROWS);
  const mid = [width / 2, (top + height) / 2];
  let best = null;
  for (const cy of ys) {
    for (const cx of xs) {
      const box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2];
      const cost = occupied.reduce((sum, o) => sum + overlap(box, o), 0);
      const dist = Math.hypot(cx - mid[0], cy - mid[1]);
      if (!best || cost < best.cost - 1e-6 || (Math.abs(cost - best.cost) <= 1e-6 && dist < best.dist)) {
        best = { cost, dist, at: [cx, cy] };
      }
    }
  }
  return best.at;
}
