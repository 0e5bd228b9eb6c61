// The browser example: replays wgdistill's recorded check cases (KD by default) on the visitor's
// GPU through WebGPU and shows each output beside its f64 CPU reference. The kernels come from
// `wgdistill shaders --export examples/web/kernels`, the records from
// `wgdistill check --replay examples/web/records`; the replay logic is shared with the Dawn check.

import { Kernels, check, openDevice } from '../../tools/webgpu/replay.mjs';

const $ = (id) => document.getElementById(id);
const fmt = (x) => (Number.isFinite(x) ? x.toPrecision(7) : String(x));

async function start() {
  if (!navigator.gpu) throw new Error('this browser has no WebGPU (navigator.gpu is missing)');
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) throw new Error('WebGPU found no adapter');
  const { device, info, name, features } = await openDevice(adapter);
  $('adapter').textContent = `Adapter: ${name} (subgroups: ${
    features.includes('subgroups') ? `${info.subgroupMinSize}–${info.subgroupMaxSize} lanes` : 'no'})`;
  const kernels = new Kernels(device, info, async (family) => {
    const response = await fetch(`kernels/${family}.wgsl`);
    if (!response.ok) throw new Error(`kernels/${family}.wgsl: ${response.status}`);
    return response.text();
  });
  const response = await fetch('records/index.json');
  if (!response.ok) throw new Error('records/index.json is missing: see README, "In the browser"');
  const index = await response.json();
  return { kernels, index, adapter: name };
}

async function run(env, match) {
  document.body.dataset.state = 'running';
  const rows = $('rows');
  rows.replaceChildren();
  const results = [];
  for (const entry of env.index.filter(match)) {
    const record = await (await fetch(`records/${entry.file}`)).json();
    const tr = document.createElement('tr');
    let result;
    try {
      const v = await check(env.kernels, record);
      const loss = v.outputs[0].values[0];
      result = { case: record.name, pass: v.pass, loss, reference: record.expected[0],
        maxAbs: v.maxAbs, values: v.outputs.reduce((n, o) => n + o.values.length, 0) };
    } catch (e) {
      result = { case: record.name, pass: false, error: e.message };
    }
    results.push(result);
    const cells = result.error
      ? [entry.kernel, entry.shape, result.error, '', '', '', 'FAIL']
      : [entry.kernel, entry.shape, fmt(result.loss), fmt(result.reference),
        result.maxAbs.toExponential(2), result.values, result.pass ? 'pass' : 'FAIL'];
    for (const c of cells) {
      const td = document.createElement('td');
      td.textContent = c;
      tr.appendChild(td);
    }
    tr.lastChild.className = result.pass ? 'pass' : 'fail';
    rows.appendChild(tr);
  }
  const failed = results.filter((r) => !r.pass).length;
  $('status').textContent = `${results.length - failed} of ${results.length} cases match the CPU reference.`;
  // For scripts (the example's test reads it): every case with its numbers.
  $('summary').textContent = JSON.stringify({ adapter: env.adapter, results });
  document.body.dataset.state = 'done';
}

try {
  const env = await start();
  const params = new URLSearchParams(location.search);
  if (params.has('cases')) $('filter').value = params.get('cases');
  const byFilter = () => (e) => e.kernel === $('filter').value;
  $('run').onclick = () => run(env, byFilter());
  $('all').onclick = () => run(env, () => true);
  await (params.get('cases') === '*' ? run(env, () => true) : run(env, byFilter()));
} catch (e) {
  $('status').textContent = `Error: ${e.message}`;
  $('status').className = 'fail';
  $('summary').textContent = JSON.stringify({ error: e.message });
  document.body.dataset.state = 'error';
}
