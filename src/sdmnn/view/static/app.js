// sdmnn view: sliders -> the server's SDM slices (drawn on 2-D canvases, zero contour by marching squares) and
// surface (three.js). World coordinates are the server's: LPS millimetres, z up.
import * as THREE from 'three';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';

const AXES = 'ijk';
const AXIS_COLOURS = ['#e0524a', '#3fae5a', '#4a7fe0'];
// what the page has done, for people (the status line) and for tests
const view = window.sdmnnView = { ready: false, updates: 0, surfaces: 0, serverMs: null, shownMs: null, error: null };

let info;
const values = {};
const pose = [0, 0, 0, 0, 0, 0];
const positions = [0, 0, 0];
let forward = 'exact';
let show = 'sdm';
let lastPlanes = null;

// ---------------------------------------------------------------------------------------------- requests

async function api(path, body) {
  const init = body ? { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) } : {};
  const response = await fetch(path, init);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function state() {
  return { params: { ...values }, pose: info.pose.length ? pose.slice() : null, forward };
}

function decode(b64, Type) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Type(bytes.buffer);
}

// One request of each kind in flight; moves made meanwhile are sent as one when it returns.
const pending = { slices: false, surface: false };
const busy = { slices: false, surface: false };
let movedAt = 0;

function changed(shape) {
  movedAt = performance.now();
  if (shape) pending.surface = true;
  requestSlices();
  updateDownloads();
}

async function requestSlices() {
  if (busy.slices) { pending.slices = true; return; }
  busy.slices = true;
  pending.slices = false;
  const since = movedAt;
  try {
    const data = await api('/api/slices', { ...state(), positions, difference: show === 'difference' });
    lastPlanes = data.planes;
    drawSlices();
    view.serverMs = data.ms;
    view.shownMs = performance.now() - since;
    view.updates += 1;
    report();
  } catch (e) {
    fail(e);
  } finally {
    busy.slices = false;
    if (pending.slices) requestSlices();
    else if (pending.surface) requestSurface();
  }
}

async function requestSurface() {
  if (busy.surface) return;
  busy.surface = true;
  pending.surface = false;
  try {
    const data = await api('/api/surface', state());
    setSurface(decode(data.vertices, Float32Array), decode(data.faces, Uint32Array));
    view.surfaces += 1;
  } catch (e) {
    fail(e);
  } finally {
    busy.surface = false;
    if (pending.surface && !busy.slices) requestSurface();
  }
}

function report() {
  const ms = (x) => x.toFixed(0);
  document.getElementById('status').textContent =
    `${forward === 'sdmnn' ? 'network' : 'exact'} SDM: server ${ms(view.serverMs)} ms, shown ${ms(view.shownMs)} ms after the move`;
}

function fail(e) {
  view.error = e.message;
  const status = document.getElementById('status');
  status.textContent = e.message;
  status.className = 'note error';
  console.error(e.message);
}

function updateDownloads() {
  const q = encodeURIComponent(JSON.stringify(state()));
  document.getElementById('download-mesh').href = `api/download/mesh.stl?state=${q}`;
  document.getElementById('download-sdm').href = `api/download/sdm.nii.gz?state=${q}`;
}

// ---------------------------------------------------------------------------------------------- the panel

const fmt = (v) => Number(v).toPrecision(4).replace(/\.?0+$/, '');

function slider(parent, id, p, value, interval, onInput) {
  const div = document.createElement('div');
  div.className = 'slider';
  div.title = p.description || '';
  const label = document.createElement('label');
  label.htmlFor = id;
  const name = document.createElement('span');
  name.textContent = p.unit ? `${p.name} (${p.unit})` : p.name;
  const shown = document.createElement('span');
  shown.textContent = fmt(value);
  label.append(name, shown);
  const input = document.createElement('input');
  Object.assign(input, { type: 'range', id, min: p.low, max: p.high, step: (p.high - p.low) / 1000, value });
  input.dataset.name = p.name;
  const range = document.createElement('div');
  range.className = 'range';
  range.textContent = `[${fmt(p.low)}, ${fmt(p.high)}] ${p.unit || ''}` +
    (interval ? ` · fit 90 %: [${fmt(interval[0])}, ${fmt(interval[1])}]` : '') + (p.description ? ` · ${p.description}` : '');
  input.addEventListener('input', () => { shown.textContent = fmt(input.value); onInput(Number(input.value)); });
  div.append(label, input, range);
  parent.append(div);
}

function buildPanel() {
  document.getElementById('title').textContent = `sdmnn view: ${info.family}`;
  const intervals = info.fit ? info.fit.intervals : {};
  const params = document.getElementById('params');
  for (const p of info.parameters) {
    values[p.name] = info.values[p.name];
    slider(params, `param-${p.name}`, p, values[p.name], intervals[p.name], (v) => { values[p.name] = v; changed(true); });
  }
  if (info.pose.length) {
    document.getElementById('pose-section').hidden = false;
    info.pose.forEach((p, n) => slider(document.getElementById('pose'), `pose-${p.name}`, p, 0, intervals[p.name],
      (v) => { pose[n] = v; changed(true); }));
  }
  const network = document.getElementById('forward-sdmnn');
  forward = info.network ? 'sdmnn' : 'exact';
  document.getElementById(`forward-${forward}`).checked = true;
  if (!info.network) {
    network.disabled = true;
    const note = document.getElementById('no-network');
    note.hidden = false;
    note.textContent = info.no_network;
  }
  for (const radio of document.querySelectorAll('input[name=forward]')) {
    radio.addEventListener('change', () => { forward = radio.value; changed(true); });
  }
  const select = document.getElementById('show');
  select.querySelector('option[value=difference]').disabled = !info.network;
  if (!info.image) select.querySelector('option[value=image]').remove();
  show = info.image ? 'image' : 'sdm';
  select.value = show;
  select.addEventListener('change', () => { show = select.value; legend(); changed(false); });
  legend();
  info.grid.shape.forEach((n, axis) => {
    positions[axis] = info.centre[axis];
    const input = document.getElementById(`slice-${axis}`);
    Object.assign(input, { max: n - 1, value: positions[axis] });
    input.addEventListener('input', () => { positions[axis] = Number(input.value); slicePlanes(); changed(false); });
    input.parentElement.parentElement.style.borderTop = `3px solid ${AXIS_COLOURS[axis]}`;
  });
  if (info.fit) buildFit();
}

function buildFit() {
  document.getElementById('fit-section').hidden = false;
  const rows = Object.entries(info.fit.intervals).map(([name, [lo, hi]]) =>
    `<tr><th>${name}</th><td>${name in info.fit.params ? fmt(info.fit.params[name]) : ''}</td><td>[${fmt(lo)}, ${fmt(hi)}]</td></tr>`);
  const quality = Object.entries(info.fit.quality).map(([k, v]) => `${k} ${typeof v === 'number' ? fmt(v) : v}`).join(', ');
  document.getElementById('fit').innerHTML =
    `<table><tr><th></th><th>MAP</th><th>90 % interval</th></tr>${rows.join('')}</table>` +
    `<p class="note">${info.fit.folder}; quality: ${quality}</p>`;
}

function legend() {
  const text = {
    sdm: 'SDM: blue inside, red outside (white at the surface); black: the zero contour',
    difference: 'network − exact: blue < 0 < red, ±0.5 mm at full colour; black: network, green: exact zero contour',
    image: 'the image (its own voxels and world coordinates); yellow: the zero contour',
  };
  document.getElementById('legend').textContent = text[show];
}

// ---------------------------------------------------------------------------------------------- slices

function diverging(t) { // t in [-1, 1] -> rgb: blue < 0 (white) < red
  t = Math.max(-1, Math.min(1, t));
  return t < 0 ? [255 * (1 + t), 255 * (1 + t), 255] : [255, 255 * (1 - t), 255 * (1 - t)];
}

function drawSlices() {
  const g = info.grid;
  const scaleSdm = 0.25 * Math.hypot(...g.shape.map((n, a) => n * g.spacing[a]));
  for (const plane of lastPlanes) {
    const [w, h] = plane.shape;
    const [a, b] = [0, 1, 2].filter((x) => x !== plane.axis);
    const sdm = decode(plane.sdm, Float32Array);
    const difference = plane.difference ? decode(plane.difference, Float32Array) : null;
    const image = plane.image ? decode(plane.image, Float32Array) : null;
    const pixels = new ImageData(w, h);
    for (let x = 0; x < w; x++) {
      for (let y = 0; y < h; y++) {
        const n = x * h + y;
        let rgb;
        if (show === 'image' && image) {
          const [lo, hi] = info.image.window;
          const v = 255 * Math.max(0, Math.min(1, (image[n] - lo) / (hi - lo)));
          rgb = [v, v, v];
        } else if (show === 'difference' && difference) {
          rgb = diverging(difference[n] / 0.5);
        } else {
          rgb = diverging(sdm[n] / scaleSdm);
        }
        const p = 4 * ((h - 1 - y) * w + x); // rows from the top: the second axis points up
        pixels.data[p] = rgb[0]; pixels.data[p + 1] = rgb[1]; pixels.data[p + 2] = rgb[2]; pixels.data[p + 3] = 255;
      }
    }
    const canvas = document.getElementById(`slice-canvas-${plane.axis}`);
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(canvas.clientWidth * dpr));
    canvas.height = Math.max(1, Math.round(canvas.clientHeight * dpr));
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const [sx, sy] = [g.spacing[a], g.spacing[b]];
    const scale = Math.min(canvas.width / (w * sx), canvas.height / (h * sy));
    const [W, H] = [w * sx * scale, h * sy * scale];
    const [ox, oy] = [(canvas.width - W) / 2, (canvas.height - H) / 2];
    const off = document.createElement('canvas');
    off.width = w; off.height = h;
    off.getContext('2d').putImageData(pixels, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, ox, oy, W, H);
    // contours in voxel units of the plane, voxel centres at (x + 0.5, y + 0.5), y up
    const toCanvas = (x, y) => [ox + (x + 0.5) * sx * scale, oy + H - (y + 0.5) * sy * scale];
    let colour = show === 'image' ? '#ffd400' : '#000';
    if (difference) {
      const network = forward === 'sdmnn' ? sdm : sdm.map((v, i) => v + difference[i]);
      const exact = network.map((v, i) => v - difference[i]);
      if (show === 'difference') contour(ctx, exact, w, h, toCanvas, '#0a0');
      contour(ctx, network, w, h, toCanvas, colour);
    } else {
      contour(ctx, sdm, w, h, toCanvas, colour);
    }
    const index = plane.index;
    const corner = [0, 0, 0];
    corner[plane.axis] = index;
    const world = toWorld(corner)[plane.axis].toFixed(2);
    document.getElementById(`slice-label-${plane.axis}`).textContent =
      `${AXES[plane.axis]} = ${index} (${'xyz'[plane.axis]} ≈ ${world} mm) · ${AXES[a]} → ${AXES[b]} ↑`;
  }
}

// Marching squares on the zero level of f (w x h, index x * h + y).
function contour(ctx, f, w, h, toCanvas, colour) {
  ctx.strokeStyle = colour;
  ctx.lineWidth = Math.max(1.5, (window.devicePixelRatio || 1) * 1.5);
  ctx.beginPath();
  const at = (x, y) => f[x * h + y];
  const cross = (x0, y0, x1, y1) => { const a = at(x0, y0), b = at(x1, y1); const t = a / (a - b); return [x0 + t * (x1 - x0), y0 + t * (y1 - y0)]; };
  for (let x = 0; x < w - 1; x++) {
    for (let y = 0; y < h - 1; y++) {
      const pts = [];
      const edges = [[x, y, x + 1, y], [x + 1, y, x + 1, y + 1], [x, y + 1, x + 1, y + 1], [x, y, x, y + 1]];
      for (const [x0, y0, x1, y1] of edges) {
        if ((at(x0, y0) < 0) !== (at(x1, y1) < 0)) pts.push(cross(x0, y0, x1, y1));
      }
      for (let i = 0; i + 1 < pts.length; i += 2) { // 2 or 4 crossings: pair them in edge order
        ctx.moveTo(...toCanvas(...pts[i]));
        ctx.lineTo(...toCanvas(...pts[i + 1]));
      }
    }
  }
  ctx.stroke();
}

// ---------------------------------------------------------------------------------------------- 3-D

let renderer, scene3d, camera, controls, surface, planes3d;

function toWorld(ijk) {
  const A = info.grid.affine;
  return [0, 1, 2].map((r) => A[r][0] * ijk[0] + A[r][1] * ijk[1] + A[r][2] * ijk[2] + A[r][3]);
}

function setup3d() {
  const host = document.getElementById('view3d');
  renderer = new THREE.WebGLRenderer({ antialias: true });
  renderer.setPixelRatio(window.devicePixelRatio || 1);
  host.append(renderer.domElement);
  scene3d = new THREE.Scene();
  scene3d.background = new THREE.Color(0x23262b);
  camera = new THREE.PerspectiveCamera(35, 1, 0.01, 1e5);
  camera.up.set(0, 0, 1); // LPS: z to superior
  scene3d.add(new THREE.HemisphereLight(0xffffff, 0x444444, 1.2));
  const light = new THREE.DirectionalLight(0xffffff, 1.5);
  light.position.set(0.3, -1, 1);
  camera.add(light);
  scene3d.add(camera);
  // the display grid's box and the three slice planes, in world mm
  const n = info.grid.shape.map((x) => x - 1);
  const corners = [];
  for (const i of [0, n[0]]) for (const j of [0, n[1]]) for (const k of [0, n[2]]) corners.push(toWorld([i, j, k]));
  const box = new THREE.BufferGeometry().setFromPoints(corners.map((c) => new THREE.Vector3(...c)));
  box.setIndex([0, 1, 2, 3, 4, 5, 6, 7, 0, 2, 1, 3, 4, 6, 5, 7, 0, 4, 1, 5, 2, 6, 3, 7]);
  scene3d.add(new THREE.LineSegments(box, new THREE.LineBasicMaterial({ color: 0x888888 })));
  planes3d = AXIS_COLOURS.map((c) => {
    const line = new THREE.LineLoop(new THREE.BufferGeometry(), new THREE.LineBasicMaterial({ color: c }));
    scene3d.add(line);
    return line;
  });
  slicePlanes();
  const centre = new THREE.Vector3(...toWorld(n.map((x) => x / 2)));
  const size = new THREE.Vector3(...corners[0]).distanceTo(new THREE.Vector3(...corners[7]));
  camera.position.copy(centre).add(new THREE.Vector3(0.6, -1.2, 0.8).multiplyScalar(size));
  controls = new OrbitControls(camera, renderer.domElement);
  controls.target.copy(centre);
  controls.update();
  controls.addEventListener('change', render);
  new ResizeObserver(() => {
    renderer.setSize(host.clientWidth, host.clientHeight);
    camera.aspect = host.clientWidth / Math.max(1, host.clientHeight);
    camera.updateProjectionMatrix();
    render();
    if (lastPlanes) drawSlices();
  }).observe(host);
}

function slicePlanes() {
  const n = info.grid.shape.map((x) => x - 1);
  planes3d.forEach((line, axis) => {
    const [a, b] = [0, 1, 2].filter((x) => x !== axis);
    const pts = [[0, 0], [n[a], 0], [n[a], n[b]], [0, n[b]]].map(([u, v]) => {
      const ijk = [0, 0, 0];
      ijk[axis] = positions[axis]; ijk[a] = u; ijk[b] = v;
      return new THREE.Vector3(...toWorld(ijk));
    });
    line.geometry.setFromPoints(pts);
  });
  render();
}

function setSurface(vertices, faces) {
  if (!surface) {
    const material = new THREE.MeshStandardMaterial({ color: 0xe8c07a, roughness: 0.55, metalness: 0.0, side: THREE.DoubleSide });
    surface = new THREE.Mesh(new THREE.BufferGeometry(), material);
    scene3d.add(surface);
  }
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute('position', new THREE.BufferAttribute(vertices, 3));
  geometry.setIndex(new THREE.BufferAttribute(faces, 1));
  geometry.computeVertexNormals();
  surface.geometry.dispose();
  surface.geometry = geometry;
  render();
}

function render() {
  if (renderer) renderer.render(scene3d, camera);
}

// ---------------------------------------------------------------------------------------------- start

async function start() {
  try {
    info = await api('/api/info');
  } catch (e) {
    fail(e);
    return;
  }
  buildPanel();
  setup3d();
  changed(true);
  view.ready = true;
}

start();
