// volsam's browser viewer: NiiVue (slices + 3D render) over the REST API of `volsam serve`.
//
// Prompts are sent as world millimetres (RAS+), which NiiVue and volsam share (lassos as voxel
// coordinates of the slice, which the session API asks for). The server's label map comes back as gzip'd
// raw bytes in the file's voxel order and is copied into NiiVue's drawing layer, so a new mask re-uploads
// and redraws that layer only, never the image volume.
/* global niivue */
import { changedVoxels, cssColour, drawColormap, histogram, rasLookup, toRAS } from "./labels.js";

const $ = (id) => document.getElementById(id);
const SLICE = { axial: 0, coronal: 1, sagittal: 2, multi: 3, render: 4 };
const NORMAL_AXIS = { 0: 2, 1: 1, 2: 0 }; // tile type -> RAS axis it is normal to (axial: S, coronal: A, sagittal: R)
const LAYOUTS = ["grid", "row", "axial", "coronal", "sagittal", "render"];
// Window presets as [width, level] in HU.
const PRESETS = { lung: [1500, -600], soft: [400, 40], bone: [1800, 400], brain: [80, 40] };
const MAX_QUEUED = 4;
const PAINT_CHUNK = 4000;

const nv = new niivue.Niivue({
  backColor: [0.07, 0.07, 0.07, 1],
  show3Dcrosshair: true,
  crosshairColor: [0.1, 0.7, 1.0, 1.0],
  fontColor: [1, 1, 0.6, 1], // orientation letters: bright, not NiiVue's grey
  fontMinPx: 15,
  isResizeCanvas: true,
  loadingText: "", // nothing is loading before an image is opened; the status line says what to do
  dragMode: niivue.DRAG_MODE.none,
  multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS,
  viewModeHotKey: "", // the page handles V: it cycles layouts that all have buttons, so 3D-only is never a trap
  clipPlaneHotKey: "",
  cycleClipPlaneHotKey: "",
  drawingEnabled: false,
});

const state = {
  id: null, info: null, inverse: null, meta: null,
  current: 1, numObjects: 1, caps: { objects: false },
  busy: false, queue: [], history: [],
  tool: "point", layout: "grid", lut: null, dims: null, serverLayer: null,
  timings: [], hover: null, lastTile: SLICE.axial,
  datastore: null, binding: null, // GET /datastore/images; the open session's {image_id, version} (or null)
};
window.volsamViewer = { nv, state, setLayout, labelCounts: () => Array.from(histogram(nv.drawBitmap || [])) };

// ---------------------------------------------------------------- status, REST

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function authHeaders() {
  const t = $("token").value.trim();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
    const err = new Error(`${res.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    err.status = res.status;
    err.headers = res.headers;
    throw err;
  }
  return res;
}

function send(method, path, body) {
  return api(path, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

// ---------------------------------------------------------------- geometry

function invert(affine) {
  const [[a, b, c, x], [d, e, f, y], [g, h, i, z]] = affine;
  const det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
  const m = [
    [(e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det],
    [(f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det],
    [(d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det],
  ];
  return (mm) => m.map((r) => r[0] * (mm[0] - x) + r[1] * (mm[1] - y) + r[2] * (mm[2] - z));
}

/** Canvas position of a pointer event -> {mm, frac, tile} on a 2D slice tile, or null (3D view, outside). */
function pick(e) {
  const rect = nv.canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const xy = [(e.clientX - rect.left) * dpr, (e.clientY - rect.top) * dpr];
  const frac = nv.canvasPos2frac(xy);
  if (!frac || frac.some((f) => !(f >= 0 && f <= 1))) return null;
  const tile = nv.screenSlices[nv.tileIndex(...xy)];
  if (!tile || tile.axCorSag > SLICE.sagittal) return null;
  return { mm: Array.from(nv.frac2mm(frac)).slice(0, 3), frac, tile: tile.axCorSag, xy };
}

/** Coordinates to 0.01 (mm or voxels): finer than any voxel, and short in JSON (bodies are capped at 64 KiB). */
const round2 = (p) => p.map((v) => Math.round(v * 100) / 100);

/** Voxel axis closest to a RAS axis (for the lasso's slice). */
function voxelAxis(rasAxis) {
  const row = state.info.affine[rasAxis].slice(0, 3).map(Math.abs);
  return row.indexOf(Math.max(...row));
}

// ---------------------------------------------------------------- session meta (names, hidden, markers)

function saveMeta() {
  if (state.id) sessionStorage.setItem(`volsam.meta.${state.id}`, JSON.stringify(state.meta));
}

function objectName(label) {
  return state.meta.names[label] || `Object ${label}`;
}

// ---------------------------------------------------------------- the label layer

async function refreshLayer(result, t) {
  const res = await api(`sessions/${state.id}/overlay?order=F`);
  const raw = new Uint8Array(await new Response(res.body.pipeThrough(new DecompressionStream("gzip"))).arrayBuffer());
  t.overlay = performance.now();
  if (raw.length !== nv.drawBitmap.length) {
    throw new Error(`label map of ${raw.length} voxels does not fit the ${nv.drawBitmap.length}-voxel image`);
  }
  toRAS(raw, nv.drawBitmap, state.lut, state.dims);
  state.serverLayer = nv.drawBitmap.slice();
  nv.refreshDrawing(true); // uploads the drawing texture and redraws; the image's texture is untouched
  t.drawn = performance.now();
  await renderObjects();
  if (result) {
    document.body.dataset.voxels = String(result.voxels);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  }
  // on screen: the frame holding the new layer has been produced
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  t.shown = performance.now();
}

/** Redraw the object list; the server's listing is asked for only after what can change the set of objects
 *  (`state.relist`: open, undo, reset, new object, delete), so a prompt costs the page no extra request. */
async function renderObjects() {
  if (state.caps.objects && (state.relist || !state.labels)) {
    const listing = await (await api(`sessions/${state.id}/objects`)).json();
    state.labels = listing.objects.map((o) => o.label);
    state.current = listing.current;
  } else if (!state.caps.objects) {
    state.labels = Array.from({ length: state.numObjects }, (_, n) => n + 1);
  }
  state.relist = false;
  const counts = histogram(nv.drawBitmap);
  const voxelMl = state.info.spacing.reduce((a, b) => a * b, 1) / 1000;
  const ul = $("objects");
  ul.replaceChildren();
  for (const label of state.labels) {
    // a deleted object keeps its label on the server, empty: the list leaves it out until it has voxels again
    if (state.meta.deleted.includes(label) && !counts[label] && label !== state.current) continue;
    const li = document.createElement("li");
    li.dataset.label = String(label);
    li.classList.toggle("current", label === state.current);
    li.classList.toggle("hidden", state.meta.hidden.includes(label));
    const ml = counts[label] * voxelMl;
    li.innerHTML = `<span class="swatch"></span><input class="name" aria-label="name"><span class="ml"></span>` +
      `<button type="button" class="eye" title="Hide / show">${state.meta.hidden.includes(label) ? "show" : "hide"}</button>` +
      `<button type="button" class="del" title="Delete this object">&times;</button>`;
    li.querySelector(".swatch").style.background = cssColour(label);
    li.querySelector(".name").value = objectName(label);
    li.querySelector(".ml").textContent = `${ml.toFixed(ml < 10 ? 2 : 1)} ml`;
    li.querySelector(".ml").dataset.voxels = String(counts[label]);
    li.querySelector(".del").disabled = !state.caps.objects;
    ul.append(li);
  }
  document.body.dataset.current = String(state.current);
  if (state.tool === "brush") nv.opts.penValue = state.current; // the brush paints the current object's colour
  drawMarks();
}

function applyColours() {
  nv.setDrawColormap(drawColormap(new Set(state.meta.hidden)));
  nv.setDrawOpacity(Number($("opacity").value));
}

// ---------------------------------------------------------------- prompts: a queue, one at a time

function showBusy() {
  document.body.dataset.busy = state.busy ? "1" : "0";
  $("busy").hidden = !state.busy;
  $("queued").textContent = state.queue.length ? `(+${state.queue.length} queued)` : "";
}

/** Run `request` (a function returning a fetch of a PromptResult) after the ones before it; `after` updates
 *  the page's own records once it succeeded. Refused, visibly, when MAX_QUEUED are already waiting. */
function submit(what, request, after = () => {}) {
  if (!state.id) return false;
  if (state.busy && state.queue.length >= MAX_QUEUED) {
    setStatus(`busy: ${what} refused, ${MAX_QUEUED} prompts are already waiting`, true);
    return false;
  }
  state.queue.push({ what, request, after });
  if (!state.busy) drain();
  else showBusy();
  return true;
}

async function drain() {
  state.busy = true;
  while (state.queue.length) {
    const job = state.queue.shift();
    showBusy();
    const t = { start: performance.now() };
    try {
      const result = await (await job.request()).json();
      t.answer = performance.now();
      state.current = result.object;
      state.numObjects = Math.max(state.numObjects, result.object);
      job.after(result);
      await refreshLayer(result, t);
      const timing = {
        server: result.latency_ms, overlay: t.overlay - t.answer, draw: t.drawn - t.overlay,
        page: t.shown - t.answer, total: t.shown - t.start,
      };
      state.timings.push(timing);
      const ml = result.voxels * state.info.spacing.reduce((a, b) => a * b, 1) / 1000;
      setStatus(`${objectName(result.object)}: ${result.voxels} voxels (${ml.toFixed(2)} ml), ${result.clicks} click(s); ` +
        `segmentation ${result.latency_ms.toFixed(0)} ms, on screen ${timing.total.toFixed(0)} ms ` +
        `(page ${timing.page.toFixed(0)} ms)`);
    } catch (err) {
      // a refused prompt leaves no marker behind
      state.meta.marks = state.meta.marks.filter((m) => !m.pending);
      drawMarks();
      setStatus(`${job.what}: ${err.message || err}`, true);
      document.body.dataset.errors = String(Number(document.body.dataset.errors || 0) + 1);
    }
  }
  state.busy = false;
  saveMeta();
  showBusy();
}

function prompt(kind, path, body, marks = []) {
  const label = state.current;
  for (const m of marks) state.meta.marks.push({ ...m, label, pending: true });
  drawMarks();
  return submit(kind, () => send("POST", `sessions/${state.id}/${path}`, body), () => {
    for (const m of state.meta.marks) if (m.pending) delete m.pending;
    state.history.push({ kind, label, marks: marks.length });
  });
}

function undo() {
  submit("undo", () => send("POST", `sessions/${state.id}/undo`), () => {
    state.relist = true;
    const last = state.history.pop();
    if (last && last.marks) {
      for (let n = state.meta.marks.length - 1, left = last.marks; n >= 0 && left; n--) {
        if (state.meta.marks[n].label === last.label) { state.meta.marks.splice(n, 1); left--; }
      }
    }
  });
}

// ---------------------------------------------------------------- markers and tool previews

const marks = $("marks");

function drawMarks(preview = null) {
  const ctx = marks.getContext("2d");
  if (marks.width !== nv.canvas.width || marks.height !== nv.canvas.height) {
    marks.width = nv.canvas.width;
    marks.height = nv.canvas.height;
  }
  ctx.clearRect(0, 0, marks.width, marks.height);
  if (!state.id || !nv.volumes.length) return;
  const cross = nv.scene.crosshairPos;
  const dimsRAS = nv.volumes[0].dimsRAS;
  const r = Math.max(6, marks.width / 160);
  for (const m of state.meta.marks) {
    if (m.label !== state.current) continue;
    if (m.box) { drawBox(ctx, m, cross, dimsRAS); continue; }
    const frac = nv.mm2frac(m.mm);
    for (const tile of nv.screenSlices) {
      const type = tile.axCorSag;
      if (type > SLICE.sagittal) continue;
      const ax = NORMAL_AXIS[type];
      if (Math.abs(frac[ax] - cross[ax]) * dimsRAS[ax + 1] > 0.5) continue; // not on this slice
      const onSlice = [...frac];
      onSlice[ax] = cross[ax]; // drawn on the slice it is within half a voxel of
      const hit = nv.frac2canvasPosWithTile(onSlice, type);
      if (!hit || !hit.pos) continue;
      // green + / red -, ringed in white (black while the prompt is still waiting for the server), so
      // a marker stands out from every label colour
      const [x, y] = hit.pos;
      ctx.beginPath();
      ctx.arc(x, y, r, 0, 2 * Math.PI);
      ctx.fillStyle = m.positive ? "#0b0" : "#d00";
      ctx.fill();
      ctx.lineWidth = 2;
      ctx.strokeStyle = m.pending ? "#000" : "#fff";
      ctx.stroke();
      ctx.beginPath();
      ctx.moveTo(x - r * 0.6, y);
      ctx.lineTo(x + r * 0.6, y);
      if (m.positive) { ctx.moveTo(x, y - r * 0.6); ctx.lineTo(x, y + r * 0.6); }
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
  }
  if (preview && preview.points.length) {
    ctx.strokeStyle = preview.positive ? "#ff0" : "#f66";
    ctx.lineWidth = 2;
    ctx.setLineDash(preview.kind === "box" ? [6, 4] : []);
    ctx.beginPath();
    const [p0, p1] = [preview.points[0], preview.points[preview.points.length - 1]];
    if (preview.kind === "box") {
      ctx.rect(p0[0], p0[1], p1[0] - p0[0], p1[1] - p0[1]);
    } else {
      ctx.moveTo(...p0);
      for (const p of preview.points) ctx.lineTo(...p);
      if (preview.kind === "lasso") ctx.closePath();
    }
    ctx.stroke();
    ctx.setLineDash([]);
  }
}

/** A box prompt, outlined on the view of the slice it was drawn on while that slice is shown. */
function drawBox(ctx, m, cross, dimsRAS) {
  const [a, b] = m.box.map((mm) => nv.mm2frac(mm));
  const ax = NORMAL_AXIS[m.tile];
  if (Math.abs(a[ax] - cross[ax]) * dimsRAS[ax + 1] > 0.5) return;
  const corners = [a, b].map((f) => { const g = [...f]; g[ax] = cross[ax]; return nv.frac2canvasPosWithTile(g, m.tile); });
  if (corners.some((c) => !c || !c.pos)) return;
  const [p, q] = corners.map((c) => c.pos);
  ctx.setLineDash([6, 4]);
  ctx.lineWidth = 2;
  ctx.strokeStyle = m.pending ? "#fff" : "#ff0";
  ctx.strokeRect(p[0], p[1], q[0] - p[0], q[1] - p[1]);
  ctx.setLineDash([]);
}

// Markers follow every redraw (slice change, zoom, layout) by wrapping NiiVue's drawScene.
const nvDrawScene = nv.drawScene.bind(nv);
nv.drawScene = (...args) => {
  const out = nvDrawScene(...args);
  drawMarks(stroke);
  return out;
};

// ---------------------------------------------------------------- tools and the mouse

const canvas = $("gl");
let stroke = null; // the box / scribble / lasso being drawn: {kind, positive, tile, points (canvas px), mm}

function setTool(tool) {
  state.tool = tool;
  document.body.dataset.tool = tool;
  for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", b.dataset.tool === tool);
  const D = niivue.DRAG_MODE;
  // NiiVue's pen draws on the crosshair path of the left button
  const primary = { point: D.crosshair, wl: D.windowing, brush: D.crosshair, eraser: D.crosshair }[tool] ?? D.none;
  nv.setMouseEventConfig({
    leftButton: { primary, withShift: primary, withCtrl: D.windowing },
    rightButton: D.none,
    centerButton: D.pan,
  });
  const painting = tool === "brush" || tool === "eraser";
  if (painting && !state.caps.objects) setStatus("brush and eraser need a server with POST /sessions/{id}/paint", true);
  nv.setDrawingEnabled(painting && state.caps.objects && !!state.id);
  if (painting) {
    nv.opts.penSize = Number($("pen").value);
    nv.setPenValue(tool === "eraser" ? 0 : state.current, false);
  }
}

canvas.addEventListener("contextmenu", (e) => e.preventDefault());

canvas.addEventListener("pointerdown", (e) => {
  if (!state.id || e.ctrlKey || e.button === 1) return;
  const at = pick(e);
  if (!at) return;
  state.lastTile = at.tile;
  const positive = e.button === 0 && !e.shiftKey;
  if (["box", "scribble", "lasso"].includes(state.tool)) {
    stroke = { kind: state.tool, positive, tile: at.tile, points: [at.xy], mm: [at.mm], vox: [] };
    canvas.setPointerCapture(e.pointerId);
  } else if (state.tool === "point") {
    stroke = { kind: "point", positive, start: [e.clientX, e.clientY], mm: [at.mm], points: [] };
  }
});

canvas.addEventListener("pointermove", (e) => {
  const at = pick(e);
  showReadout(at);
  if (!stroke || stroke.kind === "point" || !at || at.tile !== stroke.tile) return;
  stroke.points.push(at.xy);
  stroke.mm.push(at.mm);
  drawMarks(stroke);
});

canvas.addEventListener("pointerup", (e) => {
  const s = stroke;
  stroke = null;
  if (!s) return;
  drawMarks();
  if (s.kind === "point") {
    if (Math.hypot(e.clientX - s.start[0], e.clientY - s.start[1]) > 4) return; // a drag, not a click
    prompt("click", "clicks", { point: s.mm[0], positive: s.positive, world: true }, [{ mm: s.mm[0], positive: s.positive }]);
  } else if (s.kind === "box") {
    const [lo, hi] = [s.mm[0], s.mm[s.mm.length - 1]];
    if (s.mm.length < 2 || Math.hypot(s.points.at(-1)[0] - s.points[0][0], s.points.at(-1)[1] - s.points[0][1]) < 5) {
      setStatus("box: drag a rectangle on one slice", true);
      return;
    }
    prompt("box", "box", { lo: round2(lo), hi: round2(hi), world: true }, [{ box: [lo, hi], tile: s.tile, positive: true }]);
  } else if (s.kind === "scribble") {
    prompt("scribble", "scribble", { points: s.mm.map(round2), positive: s.positive, world: true });
  } else if (s.kind === "lasso") {
    if (s.mm.length < 3) { setStatus("lasso: draw a closed outline", true); return; }
    const axis = voxelAxis(NORMAL_AXIS[s.tile]);
    const vox = s.mm.map(state.inverse);
    const plane = [0, 1, 2].filter((a) => a !== axis);
    const polygon = vox.map((v) => round2([v[plane[0]], v[plane[1]]]));
    prompt("lasso", "lasso", { polygon, axis, index: Math.round(vox[0][axis]), positive: s.positive });
  }
});

// Brush and eraser: NiiVue's own pen paints the drawing layer; the stroke (the voxels it changed) goes to
// the server, whose answer then replaces the layer (the server's label map stays the truth).
nv.onDrawingChanged = (action) => {
  if (action !== "draw" || !state.serverLayer || !["brush", "eraser"].includes(state.tool)) return;
  const points = changedVoxels(nv.drawBitmap, state.serverLayer, state.lut, state.dims);
  if (!points.length) return;
  const erase = state.tool === "eraser";
  // A JSON body is capped at 64 KiB (about 5000 voxels): a big stroke goes in parts, each undone on its own.
  for (let n = 0; n < points.length; n += PAINT_CHUNK) {
    const part = points.slice(n, n + PAINT_CHUNK);
    submit(erase ? "eraser" : "brush", () => send("POST", `sessions/${state.id}/paint`, { points: part, erase }), (r) => {
      state.history.push({ kind: "paint", label: r.object, marks: 0 });
    });
  }
};

// Ctrl+wheel zooms (plain wheel moves slices, NiiVue's default).
$("view").addEventListener("wheel", (e) => {
  if (!e.ctrlKey) return;
  e.preventDefault();
  e.stopPropagation();
  zoom(e.deltaY < 0 ? 1.2 : 1 / 1.2);
}, { capture: true, passive: false });

function zoom(factor) {
  const p = nv.scene.pan2Dxyzmm;
  nv.setPan2Dxyzmm(factor ? [p[0], p[1], p[2], Math.min(20, Math.max(0.2, p[3] * factor))] : [0, 0, 0, 1]);
  document.body.dataset.zoom = nv.scene.pan2Dxyzmm[3].toFixed(3);
}

// ---------------------------------------------------------------- readout, window/level, layout

function showReadout(at) {
  if (!at || !state.info) return;
  const vox = state.inverse(at.mm).map((v) => Math.round(v));
  $("ro-voxel").textContent = vox.join(", ");
  $("ro-mm").textContent = at.mm.map((v) => v.toFixed(1)).join(", ");
  const back = nv.volumes[0];
  const [nx, ny] = state.dims;
  if (vox.every((v, a) => v >= 0 && v < state.dims[a])) {
    const slope = back.hdr.scl_slope || 1;
    const value = back.img[vox[0] + nx * (vox[1] + ny * vox[2])] * slope + (back.hdr.scl_inter || 0);
    $("ro-value").textContent = Number.isInteger(value) ? String(value) : value.toPrecision(5);
  }
}

function showWindow() {
  const v = nv.volumes[0];
  if (!v) return;
  const w = v.cal_max - v.cal_min;
  $("ro-wl").textContent = `${w.toFixed(0)} / ${((v.cal_max + v.cal_min) / 2).toFixed(0)}`;
  document.body.dataset.window = `${v.cal_min},${v.cal_max}`;
}

/** MR "auto" window: the 0.5th to 99.5th percentile of the non-zero voxels (a 1024-bin histogram). */
function autoWindow(v) {
  const lo = v.global_min, hi = v.global_max, bins = new Float64Array(1024);
  if (!(hi > lo)) return [lo, hi + 1];
  const scale = 1023 / (hi - lo), slope = v.hdr.scl_slope || 1, inter = v.hdr.scl_inter || 0;
  let total = 0;
  for (let n = 0; n < v.img.length; n++) {
    const x = v.img[n] * slope + inter;
    if (x !== 0) { bins[Math.round((x - lo) * scale)]++; total++; }
  }
  const at = (q) => { let sum = 0; for (let b = 0; b < 1024; b++) { sum += bins[b]; if (sum >= q * total) return lo + b / scale; } return hi; };
  return total ? [at(0.005), at(0.995)] : [lo, hi];
}

function setPreset(name) {
  const v = nv.volumes[0];
  if (!v) return;
  if (name === "auto") {
    [v.cal_min, v.cal_max] = state.autoWindow;
  } else if (PRESETS[name]) {
    const [w, l] = PRESETS[name];
    v.cal_min = l - w / 2;
    v.cal_max = l + w / 2;
  }
  $("preset").value = name;
  nv.updateGLVolume(); // a new window changes the image itself: here the volume has to be redrawn
  showWindow();
}

canvas.addEventListener("mouseup", () => {
  // NiiVue's windowing drag (W/L tool or Ctrl+drag) ends here
  if (!nv.volumes.length) return;
  const v = nv.volumes[0];
  if (document.body.dataset.window !== `${v.cal_min},${v.cal_max}`) {
    $("preset").value = "custom";
    showWindow();
  }
});

function setLayout(layout) {
  state.layout = layout;
  for (const b of document.querySelectorAll("[data-layout]")) b.classList.toggle("active", b.dataset.layout === layout);
  const M = niivue.MULTIPLANAR_TYPE;
  if (layout === "grid3") document.querySelector("[data-layout='grid']").classList.add("active");
  if (layout === "grid" || layout === "grid3" || layout === "row") {
    // grid3: the 2x2 grid with its 3D tile left empty (software WebGL's default, see softwareWebGL)
    nv.opts.multiplanarShowRender = layout === "grid" ? niivue.SHOW_RENDER.ALWAYS : niivue.SHOW_RENDER.NEVER;
    nv.opts.multiplanarLayout = layout === "row" ? M.ROW : M.GRID;
    nv.setSliceType(SLICE.multi);
  } else {
    nv.setSliceType(SLICE[layout]);
  }
  document.body.dataset.layout = layout;
}

function setConvention(radiological) {
  nv.setRadiologicalConvention(radiological);
  const b = $("convention");
  b.setAttribute("aria-pressed", String(radiological));
  b.textContent = radiological ? "Radiological" : "Neurological";
  b.title = radiological ? "Patient right on screen left; click for neurological (R)" : "Patient left on screen left; click for radiological (R)";
}

// ---------------------------------------------------------------- sessions

async function openSession(info, { name = "image", reattach = false } = {}) {
  if (state.id && state.id !== info.id) send("DELETE", `sessions/${state.id}`).catch(() => {});
  state.id = info.id;
  state.info = info;
  state.inverse = invert(info.affine);
  state.history = [];
  state.labels = null; // asked for again
  state.numObjects = info.objects || 1;
  state.meta = JSON.parse(sessionStorage.getItem(`volsam.meta.${info.id}`) || "null") ||
    { image: name, names: {}, hidden: [], deleted: [], marks: [] };
  sessionStorage.setItem("volsam.session", info.id);
  saveMeta();
  await nv.loadVolumes([{ url: `sessions/${info.id}/image`, name: "image.nii.gz", headers: authHeaders() }]);
  const back = nv.volumes[0];
  state.autoWindow = autoWindow(back);
  state.dims = back.hdr.dims.slice(1, 4);
  const identity = back.permRAS.every((p, s) => p === s + 1);
  state.lut = identity ? null : rasLookup(back.permRAS, state.dims);
  nv.createEmptyDrawing();
  applyColours();
  // CT (air at about -1000 HU) opens in a soft-tissue window, anything else with NiiVue's robust range
  setPreset(back.global_min < -900 ? "soft" : "auto");
  try {
    await api(`sessions/${info.id}/objects`);
    state.caps.objects = true;
  } catch (_) {
    state.caps.objects = false; // an older server: no object list, select, delete or paint
  }
  if (reattach && state.caps.objects === false) {
    // the server's state says how many objects exist; the current one is the last
    state.current = state.numObjects;
  }
  const t = {};
  await refreshLayer(null, t);
  for (const b of ["undo", "reset", "object", "save"]) $(b).disabled = false;
  $("ds-conflict").hidden = true;
  $("ds-status").textContent = "";
  delete document.body.dataset.dsVersion;
  await bindDatastore();
  document.body.dataset.session = info.id;
  setTool(state.tool);
  setStatus(`${reattach ? "Reattached to the server's session: " : ""}${info.shape.join(" x ")} voxels, ` +
    `${info.spacing.map((s) => s.toFixed(2)).join(" x ")} mm. Pick a tool and prompt a structure.`);
}

async function reattach() {
  const id = sessionStorage.getItem("volsam.session");
  if (!id) { setStatus("Open an image or the demo volume."); return false; }
  try {
    const info = await (await api(`sessions/${id}`)).json();
    await openSession(info, { reattach: true });
    return true;
  } catch (err) {
    sessionStorage.removeItem("volsam.session");
    setStatus(`The previous session is gone (${err.message}). Open an image or the demo volume.`);
    return false;
  }
}

let opening = Promise.resolve(); // sessions open one after another (a Demo click during a reattach waits)

function guarded(what, fn) {
  opening = opening.then(async () => {
    setStatus(`${what}...`);
    try { await fn(); } catch (err) { setStatus(`${what}: ${err.message || err}`, true); }
  });
  return opening;
}

// ---------------------------------------------------------------- the datastore (volsam serve --datastore)

function setDsStatus(text, isError = false) {
  const el = $("ds-status");
  el.textContent = text;
  el.classList.toggle("error", isError);
  setStatus(text, isError);
}

/** The datastore's images and their label status; the panel stays hidden when the server has none (404). */
async function listImages() {
  try {
    state.datastore = await (await api("datastore/images")).json();
  } catch (err) {
    if (err.status !== 404 && err.status !== 401) setStatus(`image list: ${err.message}`, true);
    return;
  }
  $("datastore").hidden = false;
  $("ds-where").textContent = `(${state.datastore.backend})`;
  $("ds-where").title = state.datastore.location;
  const ul = $("images");
  ul.replaceChildren();
  for (const img of state.datastore.images) {
    const li = document.createElement("li");
    li.dataset.id = img.id;
    li.title = `${img.id}: open it, continuing from its latest saved final label`;
    li.classList.toggle("current", img.id === state.binding?.image_id);
    li.innerHTML = `<span class="name"></span><span class="badge"></span>`;
    li.querySelector(".name").textContent = img.name;
    const badge = li.querySelector(".badge");
    badge.dataset.status = img.status;
    badge.textContent = img.status === "none" ? "none" : `${img.status} v${img.labels[img.status]}`;
    ul.append(li);
  }
}

/** Which datastore image the open session holds (404: none, e.g. an uploaded file or the demo). */
async function bindDatastore() {
  state.binding = null;
  if (state.datastore) {
    try { state.binding = await (await api(`sessions/${state.id}/datastore`)).json(); } catch (_) { /* not bound */ }
  }
  $("ds-save").disabled = !state.binding;
  document.body.dataset.image = state.binding ? state.binding.image_id : "";
  if (state.datastore) await listImages(); // marks the open image, with what is saved now
}

/** The prompts already sent have been answered (a save holds all of them). */
async function idle() {
  while (state.busy) await new Promise((r) => setTimeout(r, 50));
}

function saveToDatastore(force = false) {
  return guarded("saving to the datastore", async () => {
    await idle();
    let conflict = false;
    try {
      const r = await (await send("POST", `sessions/${state.id}/datastore/save`, { kind: "final", force })).json();
      const where = r.pushed ? `, pushed to the PACS as DICOM-SEG (series ${r.remote.seg_series_instance_uid})`
        : state.datastore.backend === "local" ? " in the folder" : "";
      setDsStatus(`saved ${r.image_id} as final v${r.version}${where}`);
      document.body.dataset.dsVersion = String(r.version);
    } catch (err) {
      if (err.status === 409) {
        // someone saved a newer version since this session's: keep both (force), or continue from theirs
        const latest = err.headers.get("X-Latest-Version");
        $("ds-resume").textContent = `Reopen latest (v${latest})`;
        conflict = true;
        setDsStatus(`conflict: ${err.message}`, true);
      } else {
        setDsStatus(`save: ${err.message}`, true); // 502: saved locally, the PACS did not take it (the message says so)
      }
    }
    await bindDatastore(); // the version the next save builds on (after a 502 too: saved locally), and the list
    $("ds-conflict").hidden = !conflict;
  });
}

$("images").addEventListener("click", (e) => {
  const li = e.target.closest("li");
  if (!li) return;
  const img = state.datastore.images.find((i) => i.id === li.dataset.id);
  guarded(`opening ${img.name}`, async () => {
    const info = await (await send("POST", `datastore/images/${encodeURIComponent(img.id)}/session`, { restore: true })).json();
    await openSession(info, { name: img.name });
    setDsStatus(info.version ? `${img.name}: final v${info.version} restored, ${info.objects} object(s); prompts continue from it`
      : `${img.name}: nothing saved yet`);
  });
});
$("ds-save").addEventListener("click", () => saveToDatastore(false));
$("ds-force").addEventListener("click", () => saveToDatastore(true));
$("ds-resume").addEventListener("click", () => guarded("reopening the latest label", async () => {
  await idle();
  const r = await (await send("POST", `sessions/${state.id}/datastore/resume`)).json();
  state.relist = true;
  state.history = [];
  state.numObjects = r.objects;
  state.meta.marks = []; // the prompts behind the reopened label are not this page's
  saveMeta();
  await refreshLayer(null, {});
  await bindDatastore();
  setDsStatus(`reopened ${r.image_id} at final v${r.version}: ${r.objects} object(s)`);
}));
$("token").addEventListener("change", () => { if (!state.datastore) listImages(); });

// ---------------------------------------------------------------- controls

$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  guarded(`uploading ${file.name}`, async () =>
    openSession(await (await api("sessions", { method: "POST", body: form })).json(), { name: file.name }));
});
$("demo").addEventListener("click", () =>
  guarded("loading the demo volume", async () => openSession(await (await send("POST", "sessions/demo")).json(), { name: "demo" })));

$("undo").addEventListener("click", undo);
$("reset").addEventListener("click", () => {
  if (!state.id || !window.confirm("Clear every object and prompt of this image? This cannot be undone.")) return;
  submit("reset", () => send("POST", `sessions/${state.id}/reset`), () => {
    state.relist = true;
    state.meta = { ...state.meta, names: {}, hidden: [], deleted: [], marks: [] };
    state.history = [];
    state.numObjects = 1;
    applyColours();
  });
});
$("object").addEventListener("click", () =>
  submit("new object", () => send("POST", `sessions/${state.id}/objects`), (r) => {
    state.relist = true;
    state.numObjects = Math.max(state.numObjects, r.object);
    state.history.push({ kind: "object", label: r.object, marks: 0 });
  }));

$("objects").addEventListener("click", (e) => {
  const li = e.target.closest("li");
  if (!li) return;
  const label = Number(li.dataset.label);
  if (e.target.classList.contains("eye")) {
    const hidden = new Set(state.meta.hidden);
    if (hidden.has(label)) hidden.delete(label); else hidden.add(label);
    state.meta.hidden = [...hidden];
    saveMeta();
    applyColours();
    renderObjects();
  } else if (e.target.classList.contains("del")) {
    if (!window.confirm(`Delete ${objectName(label)}?`)) return;
    submit("delete", () => send("DELETE", `sessions/${state.id}/objects/${label}`), () => {
      state.relist = true;
      state.meta.marks = state.meta.marks.filter((m) => m.label !== label);
      state.meta.deleted = [...new Set([...state.meta.deleted, label])];
      state.history.push({ kind: "delete", label, marks: 0 });
    });
  } else if (!e.target.classList.contains("name") && label !== state.current) {
    if (!state.caps.objects) { setStatus("selecting an object needs a server with POST /sessions/{id}/objects/{label}/select", true); return; }
    submit("select", () => send("POST", `sessions/${state.id}/objects/${label}/select`));
  }
});
$("objects").addEventListener("change", (e) => {
  if (!e.target.classList.contains("name")) return;
  state.meta.names[Number(e.target.closest("li").dataset.label)] = e.target.value.trim();
  saveMeta();
});

$("opacity").addEventListener("input", (e) => nv.setDrawOpacity(Number(e.target.value)));
$("pen").addEventListener("input", (e) => {
  nv.opts.penSize = Number(e.target.value);
  $("pen-size").textContent = e.target.value;
});
$("preset").addEventListener("change", (e) => setPreset(e.target.value));
$("convention").addEventListener("click", () => setConvention(!nv.opts.isRadiologicalConvention));
$("zoom-in").addEventListener("click", () => zoom(1.25));
$("zoom-out").addEventListener("click", () => zoom(1 / 1.25));
$("zoom-fit").addEventListener("click", () => zoom(0));
for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
for (const b of document.querySelectorAll("[data-layout]")) b.addEventListener("click", () => setLayout(b.dataset.layout));

$("save").addEventListener("click", () => guarded("saving", async () => {
  // The server picks the image's own format (DICOM-SEG for a DICOM series); the page names the file
  // after the image.
  const resp = await api(`sessions/${state.id}/labels`);
  const served = ((resp.headers.get("Content-Disposition") || "").match(/filename="labels\.([^"]+)"/) || [])[1] || "nii.gz";
  const stem = state.meta.image.replace(/\.(nii\.gz|nii|nrrd|mha|mhd|dcm)$/i, "") || "image";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await resp.blob());
  a.download = `${stem}_labels.${served}`;
  a.click();
  URL.revokeObjectURL(a.href);
  setStatus(`saved ${a.download}`);
}));

// Shortcuts. Captured before NiiVue's own key handling, so its keys cannot change the view behind the page.
const TOOL_KEYS = { p: "point", b: "box", s: "scribble", l: "lasso", d: "brush", e: "eraser", w: "wl" };
document.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
  const key = e.key.toLowerCase();
  let done = true;
  if ((e.ctrlKey || e.metaKey) && key === "z") undo();
  else if (e.ctrlKey || e.metaKey || e.altKey) done = false;
  else if (TOOL_KEYS[key]) setTool(TOOL_KEYS[key]);
  else if (key === "n") $("object").click();
  else if (key === "v") setLayout(LAYOUTS[(Math.max(0, LAYOUTS.indexOf(state.layout)) + 1) % LAYOUTS.length]);
  else if (key === "r") setConvention(!nv.opts.isRadiologicalConvention);
  else if (key === "+" || key === "=") zoom(1.25);
  else if (key === "-") zoom(1 / 1.25);
  else if (key === "0") zoom(0);
  else if (key === "escape") { stroke = null; drawMarks(); }
  else if (["arrowup", "arrowdown", "pageup", "pagedown"].includes(key) && state.id) {
    const step = (key === "arrowup" || key === "pageup" ? 1 : -1) * (key.startsWith("page") ? 5 : 1);
    const tile = state.layout in SLICE && SLICE[state.layout] <= 2 ? SLICE[state.layout] : state.lastTile;
    const ax = NORMAL_AXIS[tile];
    nv.moveCrosshairInVox(ax === 0 ? step : 0, ax === 1 ? step : 0, ax === 2 ? step : 0);
  } else done = false;
  if (done) { e.preventDefault(); e.stopPropagation(); }
}, { capture: true });

nv.onLocationChange = () => drawMarks();

/** True when WebGL runs in software (SwiftShader, llvmpipe): there the 3D view costs about a second per
 *  redraw (benchmarks/bench_viewer.py), so the page opens in the 2x2 grid without it (the 2x2 button
 *  brings it back). */
function softwareWebGL() {
  const gl = nv.gl;
  const ext = gl && gl.getExtension("WEBGL_debug_renderer_info");
  const renderer = ext ? String(gl.getParameter(ext.UNMASKED_RENDERER_WEBGL)) : "";
  return /swiftshader|llvmpipe|softpipe|software/i.test(renderer);
}

nv.attachToCanvas(canvas).then(async () => {
  state.software = softwareWebGL();
  document.body.dataset.software = state.software ? "1" : "0";
  setLayout(state.software ? "grid3" : "grid");
  setTool("point");
  setConvention(false);
  await listImages();
  const path = new URLSearchParams(window.location.search).get("path");
  if (path) {
    await guarded(`opening ${path}`, async () =>
      openSession(await (await send("POST", "sessions", { path })).json(), { name: path.split("/").pop() }));
  } else {
    await guarded("reattaching", reattach);
  }
  document.body.dataset.ready = "1";
});
