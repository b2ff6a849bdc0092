// lift3d viewer: a WebGL2 Gaussian-splat renderer and the run's cameras, written for this project (no libraries).
//
// Splats: each Gaussian's centre and world covariance (lift3d_core/viewer/splats.py) sit in an RGBA32UI texture,
// 3 texels per Gaussian; every frame draws one screen-space ellipse per Gaussian (the EWA projection of 3DGS:
// J W Sigma W^T J^T plus 0.3 px^2), sorted back to front on the CPU and alpha-blended with premultiplied colour.
// Cameras follow lift3d_core/camera.py: OpenCV axes (x right, y down, z forward), c2w 4x4, K in pixels of the
// frame; the page keeps the same convention for its own camera, so a calibrated camera is used as it is.
"use strict";

const SPLATS_PER_ROW = 1024; // the data texture is 3 * 1024 texels wide
const NEAR = 0.01;
const EPS2D = 0.3; // px^2 added to every projected covariance, as the rasterizers (lift3d_core/splat/raster_*.py)

const canvas = document.getElementById("canvas");
const statusLine = document.getElementById("status");
const gl = canvas.getContext("webgl2", { antialias: false, preserveDrawingBuffer: true });

const debug = {
  ready: false, draws: 0, sorts: 0, numGaussians: 0, selected: -1,
  frustums: () => frustumScreenPositions(),
  pose: () => poseInfo(),
  frame: () => frameInfo(),
  field: () => ({ ...fieldState }),
  select: (i) => selectCamera(i),
};
window.viewerDebug = debug;

// ---------------------------------------------------------------------------------------------- small linear algebra
const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
const add = (a, b) => [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
const scale = (a, s) => [a[0] * s, a[1] * s, a[2] * s];
const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const norm = (a) => Math.sqrt(dot(a, a));
const col = (R, j) => [R[0][j], R[1][j], R[2][j]];
const matvec = (R, v) => [dot(R[0], v), dot(R[1], v), dot(R[2], v)];
const matmul = (A, B) => A.map((row) => [0, 1, 2].map((j) => row[0] * B[0][j] + row[1] * B[1][j] + row[2] * B[2][j]));

function axisAngle(axis, angle) { // rotation matrix about the unit axis (Rodrigues)
  const [x, y, z] = scale(axis, 1 / norm(axis));
  const c = Math.cos(angle), s = Math.sin(angle), t = 1 - c;
  return [[t * x * x + c, t * x * y - s * z, t * x * z + s * y],
          [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
          [t * x * z - s * y, t * y * z + s * x, t * z * z + c]];
}

function orthonormalize(R) { // keeps a rotation a rotation after many small updates
  let x = col(R, 0), y = col(R, 1);
  x = scale(x, 1 / norm(x));
  y = sub(y, scale(x, dot(x, y)));
  y = scale(y, 1 / norm(y));
  const z = [x[1] * y[2] - x[2] * y[1], x[2] * y[0] - x[0] * y[2], x[0] * y[1] - x[1] * y[0]];
  return [[x[0], y[0], z[0]], [x[1], y[1], z[1]], [x[2], y[2], z[2]]];
}

// ---------------------------------------------------------------------------------------------- the page's camera
// R: rotation whose columns are the camera axes in world coordinates; eye: its centre; K, kw, kh: the reference
// intrinsics (a frame's), fitted into the canvas at draw time so the frame's field of view stays whole.
const cam = { R: [[1, 0, 0], [0, 1, 0], [0, 0, 1]], eye: [0, 0, 0], pivot: [0, 0, 1], K: null, kw: 1, kh: 1, up: [0, -1, 0] };
let scene = null;
let atCamera = -1; // the camera the view sits at: its frustum would only frame the screen, so it is hidden

function setPose(c2w, K, kw, kh, pivotDistance) {
  cam.R = [0, 1, 2].map((i) => c2w[i].slice(0, 3));
  cam.eye = [c2w[0][3], c2w[1][3], c2w[2][3]];
  cam.pivot = add(cam.eye, scale(col(cam.R, 2), pivotDistance));
  cam.K = K; cam.kw = kw; cam.kh = kh;
  requestDraw();
}

function intrinsics() { // K fitted into the canvas (pixels of the drawing buffer)
  const w = canvas.width, h = canvas.height, s = Math.min(w / cam.kw, h / cam.kh);
  return { fx: cam.K[0][0] * s, fy: cam.K[1][1] * s,
           cx: w / 2 + (cam.K[0][2] - cam.kw / 2) * s, cy: h / 2 + (cam.K[1][2] - cam.kh / 2) * s, w, h };
}

function w2c() { // [Rt | -Rt eye] as rows
  const Rt = [col(cam.R, 0), col(cam.R, 1), col(cam.R, 2)];
  return { Rt, t: scale(matvec(Rt, cam.eye), -1) };
}

function toCamera(p) { const v = w2c(); return add(matvec(v.Rt, p), v.t); }

function project(p) { // world point -> drawing-buffer pixel and depth
  const c = toCamera(p), k = intrinsics();
  return { x: k.fx * c[0] / c[2] + k.cx, y: k.fy * c[1] / c[2] + k.cy, z: c[2] };
}

function viewMatrix() { // column-major mat4 of the world-to-camera transform
  const { Rt, t } = w2c();
  return new Float32Array([Rt[0][0], Rt[1][0], Rt[2][0], 0, Rt[0][1], Rt[1][1], Rt[2][1], 0,
                           Rt[0][2], Rt[1][2], Rt[2][2], 0, t[0], t[1], t[2], 1]);
}

function projectionMatrix(far) { // OpenCV camera coordinates -> clip space (y flipped, w = z)
  const k = intrinsics(), a = (far + NEAR) / (far - NEAR), b = -2 * far * NEAR / (far - NEAR);
  return new Float32Array([2 * k.fx / k.w, 0, 0, 0, 0, -2 * k.fy / k.h, 0, 0,
                           2 * k.cx / k.w - 1, -(2 * k.cy / k.h - 1), a, 1, 0, 0, b, 0]);
}

function leaveCamera() {
  if (atCamera >= 0) { atCamera = -1; buildFrustums(); }
}

function orbit(yaw, pitch) {
  leaveCamera();
  const rot = matmul(axisAngle(col(cam.R, 0), pitch), axisAngle(cam.up, yaw));
  cam.eye = add(cam.pivot, matvec(rot, sub(cam.eye, cam.pivot)));
  cam.R = orthonormalize(matmul(rot, cam.R));
  requestDraw();
}

function translate(right, down, forward) { // camera-axis steps, moving the pivot along
  leaveCamera();
  const d = add(add(scale(col(cam.R, 0), right), scale(col(cam.R, 1), down)), scale(col(cam.R, 2), forward));
  cam.eye = add(cam.eye, d);
  cam.pivot = add(cam.pivot, d);
  requestDraw();
}

function dolly(factor) {
  leaveCamera();
  cam.eye = add(cam.pivot, scale(sub(cam.eye, cam.pivot), factor));
  requestDraw();
}

function poseInfo() {
  const k = intrinsics(), R = cam.R, e = cam.eye;
  return { c2w: [[...R[0], e[0]], [...R[1], e[1]], [...R[2], e[2]], [0, 0, 0, 1]],
           fx: k.fx, fy: k.fy, cx: k.cx, cy: k.cy, width: k.w, height: k.h, pivot: cam.pivot };
}

// ---------------------------------------------------------------------------------------------- WebGL programs
const SPLAT_VS = `#version 300 es
precision highp float; precision highp int; precision highp usampler2D;
uniform usampler2D u_data;
uniform mat4 u_view;
uniform vec2 u_focal, u_center, u_viewport;
in uint a_index;
out vec4 v_color;
out vec2 v_std;
void main() {
  ivec2 base = ivec2(int(a_index % ${SPLATS_PER_ROW}u) * 3, int(a_index / ${SPLATS_PER_ROW}u));
  uvec4 t0 = texelFetch(u_data, base, 0), t1 = texelFetch(u_data, base + ivec2(1, 0), 0);
  uvec4 t2 = texelFetch(u_data, base + ivec2(2, 0), 0);
  vec4 c = u_view * vec4(uintBitsToFloat(t0.xyz), 1.0);
  gl_Position = vec4(0.0, 0.0, 2.0, 1.0); // culled unless set below
  if (c.z < ${NEAR}) return;
  // the Jacobian is taken at most 15% of the view's size beyond its edges (3DGS: 1.3 times the half field of view)
  vec2 lo = (-0.15 * u_viewport - u_center) / u_focal, hi = (1.15 * u_viewport - u_center) / u_focal;
  vec2 xy = clamp(c.xy / c.z, lo, hi) * c.z;
  vec4 a = uintBitsToFloat(t1);
  vec2 b = uintBitsToFloat(t2.xy);
  mat3 sigma = mat3(a.x, a.y, a.z, a.y, a.w, b.x, a.z, b.x, b.y);
  mat3 J = mat3(u_focal.x / c.z, 0.0, 0.0, 0.0, u_focal.y / c.z, 0.0,
                -u_focal.x * xy.x / (c.z * c.z), -u_focal.y * xy.y / (c.z * c.z), 0.0);
  mat3 T = J * mat3(u_view);
  mat3 cov = T * sigma * transpose(T);
  float sxx = cov[0][0] + ${EPS2D}, sxy = cov[0][1], syy = cov[1][1] + ${EPS2D};
  float mid = 0.5 * (sxx + syy), rad = length(vec2(0.5 * (sxx - syy), sxy));
  float l1 = mid + rad, l2 = max(mid - rad, 1e-4);
  vec2 e1 = abs(sxy) > 1e-12 ? normalize(vec2(sxy, l1 - sxx)) : (sxx >= syy ? vec2(1.0, 0.0) : vec2(0.0, 1.0));
  vec2 e2 = vec2(-e1.y, e1.x);
  vec2 centre = u_focal * c.xy / c.z + u_center;
  float reach = 3.0 * sqrt(l1);
  if (any(lessThan(centre + reach, vec2(0.0))) || any(greaterThan(centre - reach, u_viewport))) return;
  vec2 corner = vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1)) * 2.0 - 1.0;
  v_std = 3.0 * corner;
  vec2 px = centre + v_std.x * sqrt(l1) * e1 + v_std.y * sqrt(l2) * e2;
  gl_Position = vec4(2.0 * px.x / u_viewport.x - 1.0, 1.0 - 2.0 * px.y / u_viewport.y, 0.0, 1.0);
  v_color = vec4((uvec4(t0.w) >> uvec4(0u, 8u, 16u, 24u)) & 0xffu) / 255.0; // r, g, b, opacity bytes
}`;

const SPLAT_FS = `#version 300 es
precision highp float;
in vec4 v_color;
in vec2 v_std;
out vec4 o;
void main() {
  float power = -0.5 * dot(v_std, v_std);
  float alpha = min(0.99, v_color.a * exp(power));
  if (power < -4.5 || alpha < 1.0 / 255.0) discard;
  o = vec4(v_color.rgb * alpha, alpha);
}`;

const LINE_VS = `#version 300 es
uniform mat4 u_view, u_proj;
in vec3 a_position;
in vec3 a_color;
out vec3 v_color;
void main() { gl_Position = u_proj * u_view * vec4(a_position, 1.0); v_color = a_color; }`;

const LINE_FS = `#version 300 es
precision mediump float;
in vec3 v_color;
out vec4 o;
void main() { o = vec4(v_color, 1.0); }`;

function program(vsSource, fsSource) {
  const p = gl.createProgram();
  for (const [type, src] of [[gl.VERTEX_SHADER, vsSource], [gl.FRAGMENT_SHADER, fsSource]]) {
    const s = gl.createShader(type);
    gl.shaderSource(s, src);
    gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error("shader: " + gl.getShaderInfoLog(s));
    gl.attachShader(p, s);
  }
  gl.linkProgram(p);
  if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error("program: " + gl.getProgramInfoLog(p));
  return p;
}

// ---------------------------------------------------------------------------------------------- splats
const splats = { count: 0, means: null, canonicalMeans: null, order: null, depth: null, keys: null,
                 counts: new Uint32Array(65536), visible: 0 };
let splatProgram, splatVao, indexBuffer, dataTexture, lineProgram, lineVao, linePositions, lineColors, lineCount = 0;

function parseSplats(buffer) { // lift3d_core/viewer/splats.py: header, means f32[N,3], cov f32[N,6], rgba u8[N,4]
  const head = new DataView(buffer, 0, 16);
  const magic = String.fromCharCode(...new Uint8Array(buffer, 0, 4));
  const n = head.getUint32(8, true);
  if (magic !== "L3DS" || head.getUint32(4, true) !== 1 || buffer.byteLength !== 16 + 40 * n) {
    throw new Error(`not a lift3d splat buffer (${magic}, ${buffer.byteLength} bytes)`);
  }
  return { n, means: new Float32Array(buffer, 16, 3 * n), cov: new Float32Array(buffer, 16 + 12 * n, 6 * n),
           rgba: new Uint32Array(buffer.slice(16 + 36 * n)) };
}

function uploadSplats(s) {
  const rows = Math.max(1, Math.ceil(s.n / SPLATS_PER_ROW)), width = 3 * SPLATS_PER_ROW;
  const data = new ArrayBuffer(width * rows * 16), f = new Float32Array(data), u = new Uint32Array(data);
  for (let i = 0; i < s.n; i++) {
    const o = ((i / SPLATS_PER_ROW | 0) * width + (i % SPLATS_PER_ROW) * 3) * 4;
    f[o] = s.means[3 * i]; f[o + 1] = s.means[3 * i + 1]; f[o + 2] = s.means[3 * i + 2]; u[o + 3] = s.rgba[i];
    for (let k = 0; k < 6; k++) f[o + 4 + k] = s.cov[6 * i + k];
  }
  gl.bindTexture(gl.TEXTURE_2D, dataTexture);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA32UI, width, rows, 0, gl.RGBA_INTEGER, gl.UNSIGNED_INT, u);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
  if (splats.count !== s.n) {
    splats.order = new Uint32Array(s.n);
    splats.depth = new Float32Array(s.n);
    splats.keys = new Int32Array(s.n);
  }
  splats.count = s.n;
  splats.means = s.means;
  debug.numGaussians = s.n;
  requestDraw();
}

function sortSplats() { // back to front by camera depth: a 16-bit counting sort, O(N)
  const { Rt, t } = w2c(), r = Rt[2], m = splats.means, n = splats.count;
  const depth = splats.depth, keys = splats.keys, counts = splats.counts, order = splats.order;
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const z = r[0] * m[3 * i] + r[1] * m[3 * i + 1] + r[2] * m[3 * i + 2] + t[2];
    depth[i] = z;
    if (z > NEAR) { if (z < lo) lo = z; if (z > hi) hi = z; }
  }
  counts.fill(0);
  const q = 65535 / Math.max(hi - lo, 1e-9);
  let visible = 0;
  for (let i = 0; i < n; i++) {
    if (depth[i] > NEAR) { const k = ((hi - depth[i]) * q) | 0; keys[i] = k; counts[k]++; visible++; } else keys[i] = -1;
  }
  for (let k = 0, start = 0; k < 65536; k++) { const c = counts[k]; counts[k] = start; start += c; }
  for (let i = 0; i < n; i++) if (keys[i] >= 0) order[counts[keys[i]]++] = i;
  splats.visible = visible;
  gl.bindBuffer(gl.ARRAY_BUFFER, indexBuffer);
  gl.bufferData(gl.ARRAY_BUFFER, order.subarray(0, visible), gl.DYNAMIC_DRAW);
  debug.sorts++;
}

// ---------------------------------------------------------------------------------------------- frustums
function frustumCorners(c) { // apex and the 4 image corners at the frustum depth, world frame
  const d = scene.frustum_depth, K = c.K, R = [0, 1, 2].map((i) => c.c2w[i].slice(0, 3));
  const eye = [c.c2w[0][3], c.c2w[1][3], c.c2w[2][3]];
  const at = (u, v) => add(eye, matvec(R, [(u - K[0][2]) / K[0][0] * d, (v - K[1][2]) / K[1][1] * d, d]));
  return { eye, corners: [at(0, 0), at(c.width, 0), at(c.width, c.height), at(0, c.height)],
           centre: at(c.width / 2, c.height / 2), top: at(c.width / 2, -0.25 * c.height) };
}

function frustumColor(c) {
  if (c.index === debug.selected) return [1.0, 0.85, 0.1];
  if (c.index === 0) return [0.2, 1.0, 0.35];
  return c.registered ? [0.3, 0.65, 1.0] : [0.5, 0.5, 0.5];
}

function buildFrustums() {
  const pos = [], colr = [];
  for (const c of scene.cameras) {
    if (c.index === atCamera) continue;
    const f = frustumCorners(c), rgb = frustumColor(c), k = f.corners;
    const segs = [[f.eye, k[0]], [f.eye, k[1]], [f.eye, k[2]], [f.eye, k[3]], [k[0], k[1]], [k[1], k[2]],
                  [k[2], k[3]], [k[3], k[0]], [k[0], f.top], [f.top, k[1]]]; // the triangle marks the frame's top
    for (const [a, b] of segs) { pos.push(...a, ...b); colr.push(...rgb, ...rgb); }
  }
  lineCount = pos.length / 3;
  gl.bindBuffer(gl.ARRAY_BUFFER, linePositions);
  gl.bufferData(gl.ARRAY_BUFFER, new Float32Array(pos), gl.STATIC_DRAW);
  gl.bindBuffer(gl.ARRAY_BUFFER, lineColors);
  gl.bufferData(gl.ARRAY_BUFFER, new Float32Array(colr), gl.STATIC_DRAW);
}

function frustumScreenPositions() { // where each camera's frustum can be clicked, in CSS pixels of the page
  if (!scene) return [];
  const rect = canvas.getBoundingClientRect(), k = canvas.width / rect.width, out = [];
  for (const c of scene.cameras) {
    if (c.index === atCamera) continue;
    const p = project(frustumCorners(c).centre);
    if (p.z > NEAR && p.x >= 0 && p.y >= 0 && p.x < canvas.width && p.y < canvas.height) {
      out.push({ index: c.index, label: c.label, x: rect.left + p.x / k, y: rect.top + p.y / k });
    }
  }
  return out;
}

function pickFrustum(clientX, clientY) { // the frustum whose centre or apex is nearest the click, within 20 px
  const rect = canvas.getBoundingClientRect(), k = canvas.width / rect.width;
  const x = (clientX - rect.left) * k, y = (clientY - rect.top) * k;
  let best = -1, bestD = 20 * k;
  for (const c of scene.cameras) {
    if (c.index === atCamera) continue;
    const f = frustumCorners(c);
    for (const p of [project(f.centre), project(f.eye)]) {
      const d = Math.hypot(p.x - x, p.y - y);
      if (p.z > NEAR && d < bestD) { best = c.index; bestD = d; }
    }
  }
  return best;
}

// ---------------------------------------------------------------------------------------------- drawing
let drawQueued = false;
function requestDraw() {
  if (!drawQueued && splatProgram) { drawQueued = true; requestAnimationFrame(draw); }
}

function resize() {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr)), h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
}

function draw() {
  drawQueued = false;
  resize();
  const k = intrinsics(), view = viewMatrix();
  gl.viewport(0, 0, k.w, k.h);
  gl.clearColor(0, 0, 0, 1); // the rasterizers' default background
  gl.clear(gl.COLOR_BUFFER_BIT);
  if (splats.count) {
    sortSplats();
    gl.useProgram(splatProgram);
    gl.bindVertexArray(splatVao);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, dataTexture);
    gl.uniform1i(gl.getUniformLocation(splatProgram, "u_data"), 0);
    gl.uniformMatrix4fv(gl.getUniformLocation(splatProgram, "u_view"), false, view);
    gl.uniform2f(gl.getUniformLocation(splatProgram, "u_focal"), k.fx, k.fy);
    gl.uniform2f(gl.getUniformLocation(splatProgram, "u_center"), k.cx, k.cy);
    gl.uniform2f(gl.getUniformLocation(splatProgram, "u_viewport"), k.w, k.h);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, splats.visible);
    gl.disable(gl.BLEND);
  }
  if (lineCount && showCameras) {
    gl.useProgram(lineProgram);
    gl.bindVertexArray(lineVao);
    gl.uniformMatrix4fv(gl.getUniformLocation(lineProgram, "u_view"), false, view);
    gl.uniformMatrix4fv(gl.getUniformLocation(lineProgram, "u_proj"), false, projectionMatrix(1e4 * scene.pivot_distance));
    gl.drawArrays(gl.LINES, 0, lineCount);
  }
  gl.bindVertexArray(null);
  debug.draws++;
}

// ---------------------------------------------------------------------------------------------- panel
const frameImg = document.getElementById("frame");
const fieldSelect = document.getElementById("field");
const fieldStats = document.getElementById("field-stats");
const applyField = document.getElementById("apply-field");
const fieldState = { frame: -1, loading: false, meanOffset: 0, maxOffset: 0 };
let canonical = null, showCameras = true;

function frameInfo() {
  return { index: debug.selected, src: frameImg.getAttribute("src"), loaded: frameImg.complete && frameImg.naturalWidth > 0,
           width: frameImg.naturalWidth, height: frameImg.naturalHeight };
}

function selectCamera(i) {
  const c = scene.cameras[i];
  debug.selected = i;
  atCamera = i;
  setPose(c.c2w, c.K, c.width, c.height, scene.pivot_distance);
  buildFrustums();
  document.getElementById("frame-label").textContent =
    `${c.label}${i === 0 ? " (the input view)" : ""} · frame code (${c.code.map((v) => v.toFixed(3)).join(", ")})` +
    (c.registered ? "" : " · not registered by calibration");
  if (scene.has_frames) frameImg.src = `/api/frame/${i}.jpg`;
  applyField.disabled = !scene.has_field;
}

async function showField(value) {
  if (value === "") {
    uploadSplats(canonical);
    Object.assign(fieldState, { frame: -1, meanOffset: 0, maxOffset: 0 });
    fieldStats.textContent = "The canonical Gaussians; choose a frame to see them moved by its distortion field.";
    return;
  }
  const i = Number(value);
  fieldState.loading = true;
  fieldStats.textContent = "evaluating the field…";
  const moved = parseSplats(await fetchBuffer(`/api/field/${i}.bin`));
  let sum = 0, max = 0;
  for (let j = 0; j < moved.n; j++) {
    const d = Math.hypot(moved.means[3 * j] - canonical.means[3 * j], moved.means[3 * j + 1] - canonical.means[3 * j + 1],
                         moved.means[3 * j + 2] - canonical.means[3 * j + 2]);
    sum += d; max = Math.max(max, d);
  }
  uploadSplats(moved);
  Object.assign(fieldState, { frame: i, loading: false, meanOffset: sum / Math.max(1, moved.n), maxOffset: max });
  fieldStats.textContent = `As frame ${scene.cameras[i].label} was trained: centres moved by ` +
    `${fieldState.meanOffset.toPrecision(3)} on average, ${max.toPrecision(3)} at most (world units; ` +
    `the cameras are ${scene.frustum_depth.toPrecision(3)} deep).`;
}

async function fetchBuffer(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status} ${await r.text()}`);
  return r.arrayBuffer();
}

// ---------------------------------------------------------------------------------------------- input
function installControls() {
  let drag = null;
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, x0: e.clientX, y0: e.clientY, pan: e.button === 2 || e.shiftKey };
    canvas.setPointerCapture(e.pointerId);
    canvas.focus();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y, k = intrinsics();
    drag.x = e.clientX; drag.y = e.clientY;
    if (drag.pan) {
      const s = norm(sub(cam.pivot, cam.eye)) / k.fx * (canvas.width / canvas.clientWidth);
      translate(-dx * s, -dy * s, 0);
    } else {
      orbit(-dx * 0.005, dy * 0.005);
    }
  });
  canvas.addEventListener("pointerup", (e) => {
    if (drag && Math.hypot(e.clientX - drag.x0, e.clientY - drag.y0) < 4 && scene.cameras.length) {
      const i = pickFrustum(e.clientX, e.clientY);
      if (i >= 0) selectCamera(i);
    }
    drag = null;
  });
  canvas.addEventListener("wheel", (e) => { e.preventDefault(); dolly(Math.exp(e.deltaY * 0.001)); }, { passive: false });
  canvas.addEventListener("keydown", (e) => {
    const step = 0.05 * scene.pivot_distance, turn = 0.05;
    const moves = { w: [0, 0, step], s: [0, 0, -step], a: [-step, 0, 0], d: [step, 0, 0], q: [0, step, 0], e: [0, -step, 0] };
    const turns = { ArrowLeft: [turn, 0], ArrowRight: [-turn, 0], ArrowUp: [0, -turn], ArrowDown: [0, turn] };
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (moves[key]) translate(...moves[key]);
    else if (turns[key]) orbit(...turns[key]);
    else if (key === "r") resetView();
    else if (key === "c") { showCameras = !showCameras; requestDraw(); }
    else return;
    e.preventDefault();
  });
  window.addEventListener("resize", requestDraw);
  document.getElementById("reset").addEventListener("click", resetView);
  fieldSelect.addEventListener("change", () => showField(fieldSelect.value).catch(fail));
  applyField.addEventListener("click", () => {
    fieldSelect.value = String(debug.selected);
    showField(fieldSelect.value).catch(fail);
  });
}

function resetView() {
  if (scene.cameras.length) { selectCamera(0); return; }
  const s = scene.start;
  setPose(s.c2w, s.K, s.width, s.height, scene.pivot_distance);
}

function fail(err) {
  statusLine.textContent = String(err.message || err);
  statusLine.className = "error";
  console.error(err);
}

// ---------------------------------------------------------------------------------------------- start
async function main() {
  if (!gl) throw new Error("this browser has no WebGL2");
  splatProgram = program(SPLAT_VS, SPLAT_FS);
  lineProgram = program(LINE_VS, LINE_FS);
  dataTexture = gl.createTexture();
  indexBuffer = gl.createBuffer();
  splatVao = gl.createVertexArray();
  gl.bindVertexArray(splatVao);
  gl.bindBuffer(gl.ARRAY_BUFFER, indexBuffer);
  const ia = gl.getAttribLocation(splatProgram, "a_index");
  gl.enableVertexAttribArray(ia);
  gl.vertexAttribIPointer(ia, 1, gl.UNSIGNED_INT, 0, 0);
  gl.vertexAttribDivisor(ia, 1);
  linePositions = gl.createBuffer();
  lineColors = gl.createBuffer();
  lineVao = gl.createVertexArray();
  gl.bindVertexArray(lineVao);
  for (const [name, buf] of [["a_position", linePositions], ["a_color", lineColors]]) {
    const loc = gl.getAttribLocation(lineProgram, name);
    gl.bindBuffer(gl.ARRAY_BUFFER, buf);
    gl.enableVertexAttribArray(loc);
    gl.vertexAttribPointer(loc, 3, gl.FLOAT, false, 0, 0);
  }
  gl.bindVertexArray(null);

  scene = await (await fetch("/api/scene.json")).json();
  document.title = `lift3d · ${scene.title}`;
  document.getElementById("title").textContent = scene.title;
  document.getElementById("counts").textContent =
    `${scene.num_gaussians.toLocaleString("en")} Gaussians · ${scene.cameras.length} cameras`;
  const s = scene.start;
  cam.up = scale(col([0, 1, 2].map((i) => s.c2w[i].slice(0, 3)), 1), -1); // the start camera's up: world up
  if (!scene.cameras.length) { // a PLY: no cameras to click, and the start view is not an input view
    document.getElementById("help").textContent = "drag: orbit · shift-drag or right-drag: pan · wheel: zoom · " +
      "W A S D Q E: move · arrows: turn · R: back to the start view";
  } else {
    document.getElementById("frame-section").hidden = false;
    buildFrustums();
  }
  if (scene.has_field) {
    document.getElementById("field-section").hidden = false;
    for (const c of scene.cameras) fieldSelect.add(new Option(`${c.index}: ${c.label}`, String(c.index)));
  }
  installControls();
  canonical = parseSplats(await fetchBuffer("/api/gaussians.bin"));
  uploadSplats(canonical);
  resetView();
  draw();
  statusLine.textContent = "";
  debug.ready = true;
}

main().catch(fail);
