// The label layer: object colours, and the server's label map (NIfTI voxel order) in NiiVue's drawing
// bitmap (RAS voxel order), which NiiVue re-uploads and redraws on its own, without touching the image.

// ITK-SNAP's default label colours (label n -> COLOURS[(n - 1) % 20]): distinct, and what users of
// ITK-SNAP already know; labels past 20 reuse them.
const COLOURS = [
  [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255], [255, 239, 213],
  [0, 0, 205], [205, 133, 63], [210, 180, 140], [102, 205, 170], [0, 0, 128], [0, 139, 139], [46, 139, 87],
  [255, 228, 225], [106, 90, 205], [221, 160, 221], [233, 150, 122], [165, 42, 42], [255, 250, 250],
];

export function colour(label) {
  return COLOURS[(label - 1) % COLOURS.length];
}

export function cssColour(label) {
  return `rgb(${colour(label).join(",")})`;
}

/** NiiVue colour table for the drawing layer: 256 entries, label 0 and hidden labels transparent. */
export function drawColormap(hidden) {
  const R = [0], G = [0], B = [0], A = [0], labels = [""];
  for (let n = 1; n < 256; n++) {
    const [r, g, b] = colour(n);
    R.push(r); G.push(g); B.push(b); A.push(hidden.has(n) ? 0 : 255); labels.push(String(n));
  }
  return { R, G, B, A, labels };
}

/**
 * Offsets taking a voxel (i, j, k) of the image file to its index in NiiVue's RAS-ordered bitmap:
 * index = lut[0][i] + lut[1][j] + lut[2][k]. `permRAS[s]` is the file axis (1-based, negative when
 * flipped) that runs along RAS axis s (NVImage.permRAS).
 */
export function rasLookup(permRAS, dims) {
  const stride = [0, 0, 0], flip = [false, false, false];
  let step = 1;
  for (let s = 0; s < 3; s++) {
    const a = Math.abs(permRAS[s]) - 1;
    stride[a] = step;
    flip[a] = permRAS[s] < 0;
    step *= dims[a];
  }
  return [0, 1, 2].map((a) => Int32Array.from({ length: dims[a] }, (_, i) => (flip[a] ? dims[a] - 1 - i : i) * stride[a]));
}

/** Copy `src` (file voxel order, i fastest) into `dst` (RAS order); `lut` from rasLookup or null (same order). */
export function toRAS(src, dst, lut, dims) {
  if (!lut) { dst.set(src); return; }
  const [lx, ly, lz] = lut;
  let n = 0;
  for (let k = 0; k < dims[2]; k++) {
    for (let j = 0; j < dims[1]; j++) {
      const o = ly[j] + lz[k];
      for (let i = 0; i < dims[0]; i++) dst[lx[i] + o] = src[n++];
    }
  }
}

/** Voxels (i, j, k) of the file grid where `now` differs from `before` (both RAS-ordered bitmaps). */
export function changedVoxels(now, before, lut, dims) {
  const out = [];
  let n = 0;
  for (let k = 0; k < dims[2]; k++) {
    for (let j = 0; j < dims[1]; j++) {
      for (let i = 0; i < dims[0]; i++, n++) {
        const at = lut ? lut[0][i] + lut[1][j] + lut[2][k] : n;
        if (now[at] !== before[at]) out.push([i, j, k]);
      }
    }
  }
  return out;
}

/** Voxel count of every label 0..255 in a bitmap. */
export function histogram(bitmap) {
  const counts = new Float64Array(256);
  for (let n = 0; n < bitmap.length; n++) counts[bitmap[n]]++;
  return counts;
}
