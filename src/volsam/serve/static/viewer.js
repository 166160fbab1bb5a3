// volsam's browser viewer: NiiVue (three slices + 3D render) over the REST API of `volsam serve`.
// Clicks are sent as world millimetres (RAS+), which NiiVue and volsam share, so no voxel-order
// convention has to agree between the two. The label map comes back as gzip'd raw bytes in NIfTI's
// voxel order and replaces the overlay's voxels in place, without re-reading a file.
/* global niivue */
"use strict";

const $ = (id) => document.getElementById(id);
const state = { id: null, busy: false, clicks: 0, lastMs: null };
const nv = new niivue.Niivue({
  backColor: [0.07, 0.07, 0.07, 1],
  show3Dcrosshair: true,
  crosshairColor: [0.1, 0.7, 1.0, 1.0], // not red: red is the first object's overlay colour
  dragMode: niivue.DRAG_MODE.none,
  isResizeCanvas: true,
});
window.volsamViewer = { nv, state };

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
    throw new Error(`${res.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return res;
}

async function openSession(info) {
  if (state.id) api(`sessions/${state.id}`, { method: "DELETE" }).catch(() => {});
  state.id = info.id;
  state.clicks = 0;
  const headers = authHeaders();
  await nv.loadVolumes([
    { url: `sessions/${info.id}/image`, name: "image.nii.gz", headers },
    { url: `sessions/${info.id}/labels?format=nii.gz`, name: "labels.nii.gz", headers, colormap: "red" },
  ]);
  // NiiVue's label look-up tables mis-render a label volume that starts empty (every voxel tinted), so
  // objects are shades of red: object n at n / (number of objects) of full intensity.
  const overlay = nv.volumes[1];
  overlay.cal_min = 0;
  overlay.cal_max = 1;
  overlay.opacity = Number($("opacity").value);
  nv.updateGLVolume();
  for (const b of ["undo", "reset", "object", "save"]) $(b).disabled = false;
  document.body.dataset.session = info.id;
  setStatus(`${info.shape.join(" x ")} voxels, ${info.spacing.map((s) => s.toFixed(2)).join(" x ")} mm. Click a structure.`);
}

async function refreshOverlay(result, t0) {
  const res = await api(`sessions/${state.id}/overlay?order=F`);
  const dtype = res.headers.get("X-Dtype");
  const raw = await new Response(res.body.pipeThrough(new DecompressionStream("gzip"))).arrayBuffer();
  const overlay = nv.volumes[1];
  const values = dtype === "uint16" ? new Uint16Array(raw) : new Uint8Array(raw);
  if (values.length !== overlay.img.length || values.BYTES_PER_ELEMENT !== overlay.img.BYTES_PER_ELEMENT) {
    throw new Error(`overlay of ${values.length} ${dtype} values does not fit the ${overlay.img.length}-voxel label volume`);
  }
  overlay.img.set(values);
  overlay.cal_min = 0;
  overlay.cal_max = Math.max(1, result.object);  // objects are numbered 1..n; the newest is full red
  nv.updateGLVolume();
  const total = performance.now() - t0;
  state.lastMs = { server: result.latency_ms, total };
  document.body.dataset.voxels = String(result.voxels);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  setStatus(`object ${result.object}, ${result.clicks} click(s): ${result.voxels} voxels; ` +
    `segmentation ${result.latency_ms.toFixed(0)} ms, on screen ${total.toFixed(0)} ms`);
}

async function run(action) {
  if (!state.id || state.busy) return;
  state.busy = true;
  const t0 = performance.now();
  try {
    const result = await (await action()).json();
    await refreshOverlay(result, t0);
  } catch (err) {
    setStatus(String(err.message || err), true);
  } finally {
    state.busy = false;
  }
}

function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

// A click is a press and release within a few pixels; drags (3D rotation) are not clicks.
let press = null;
const canvas = $("gl");
canvas.addEventListener("contextmenu", (e) => e.preventDefault());
canvas.addEventListener("pointerdown", (e) => { press = { x: e.clientX, y: e.clientY, t: performance.now() }; });
canvas.addEventListener("pointerup", (e) => {
  if (!press || Math.hypot(e.clientX - press.x, e.clientY - press.y) > 4) return;
  press = null;
  const rect = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const frac = nv.canvasPos2frac([(e.clientX - rect.left) * dpr, (e.clientY - rect.top) * dpr]);
  if (!frac || frac.some((f) => !(f >= 0 && f <= 1))) return; // outside the slices (e.g. the 3D view)
  const mm = Array.from(nv.frac2mm(frac)).slice(0, 3);
  const positive = e.button === 0 && !e.shiftKey;
  run(() => post(`sessions/${state.id}/clicks`, { point: mm, positive, world: true }));
});

$("file").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  setStatus(`uploading ${file.name}...`);
  try {
    await openSession(await (await api("sessions", { method: "POST", body: form })).json());
  } catch (err) {
    setStatus(String(err.message || err), true);
  }
});

$("demo").addEventListener("click", async () => {
  setStatus("loading the demo volume...");
  try {
    await openSession(await (await post("sessions/demo")).json());
  } catch (err) {
    setStatus(String(err.message || err), true);
  }
});

$("undo").addEventListener("click", () => run(() => post(`sessions/${state.id}/undo`)));
$("reset").addEventListener("click", () => run(() => post(`sessions/${state.id}/reset`)));
$("object").addEventListener("click", () => run(() => post(`sessions/${state.id}/objects`)));
$("opacity").addEventListener("input", (e) => {
  if (nv.volumes.length > 1) nv.setOpacity(1, Number(e.target.value));
});
$("save").addEventListener("click", async () => {
  try {
    // The server picks the image's own format (DICOM-SEG for a DICOM series) and names the file.
    const resp = await api(`sessions/${state.id}/labels`);
    const disposition = resp.headers.get("Content-Disposition") || "";
    const blob = await resp.blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = (disposition.match(/filename="([^"]+)"/) || [])[1] || "labels.nii.gz";
    a.click();
    URL.revokeObjectURL(a.href);
  } catch (err) {
    setStatus(String(err.message || err), true);
  }
});

nv.attachToCanvas(canvas).then(async () => {
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.opts.multiplanarShowRender = niivue.SHOW_RENDER.ALWAYS;
  const path = new URLSearchParams(window.location.search).get("path");
  if (path) {
    try {
      await openSession(await (await post("sessions", { path })).json());
    } catch (err) {
      setStatus(String(err.message || err), true);
    }
  }
  document.body.dataset.ready = "1";
});
