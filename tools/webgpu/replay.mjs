// Runs wgdistill's launch records ("wgdistill-replay/1", written by `wgdistill check --replay` and
// `wgdistill op --replay`) on any WebGPU implementation: Dawn through Node's `webgpu` package, or
// a browser's navigator.gpu. Plain ES module with no dependencies, shared by the Node check
// (dawn_check.mjs) and the browser example (examples/web).
//
// A record lists the buffers its launches bind (with their contents before the launches), the
// launches (kernel, override constants, uniform bytes, bound ranges, grid) and the outputs to
// read back; the WGSL comes from `wgdistill shaders --export`.

export const FORMAT = 'wgdistill-replay/1';

/** Bytes of a base64 string (atob exists in browsers and in Node ≥ 16). */
export function decodeBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/** The limits wgdistill opens a device with where the adapter has more than WebGPU's defaults. */
const LIMITS = ['maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY', 'maxComputeWorkgroupSizeZ', 'maxComputeWorkgroupStorageSize',
  'maxComputeWorkgroupsPerDimension', 'maxStorageBuffersPerShaderStage',
  'maxStorageBufferBindingSize', 'maxBufferSize'];

/**
 * Opens a device as wgdistill does: the adapter's own limits, and `subgroups` and `shader-f16`
 * where the adapter has them. Returns `{ device, info, name, features }`.
 */
export async function openDevice(adapter) {
  const requiredLimits = {};
  for (const key of LIMITS) requiredLimits[key] = adapter.limits[key];
  const features = ['subgroups', 'shader-f16'].filter((f) => adapter.features.has(f));
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures: features });
  const info = adapter.info;
  const name = [info.vendor, info.architecture, info.device, info.description]
    .filter((s) => s).join(' ') || 'unnamed adapter';
  return { device, info, name, features };
}

/** Runs `make` inside a validation error scope: its error, or the scope's, is thrown. */
async function validated(device, what, make) {
  device.pushErrorScope('validation');
  let value;
  let thrown = null;
  try {
    value = await make();
  } catch (e) {
    thrown = e;
  }
  const error = await device.popErrorScope();
  if (thrown) throw new Error(`${what}: ${thrown.message ?? thrown}`);
  if (error) throw new Error(`${what}: ${error.message}`);
  return value;
}

/** The combinations of boolean overrides a kernel may be built with: 2^n objects. */
export function overrideCombinations(names) {
  let combos = [{}];
  for (const name of names) {
    combos = combos.flatMap((c) => [{ ...c, [name]: 0 }, { ...c, [name]: 1 }]);
  }
  return combos;
}

/** The bind group layout of a kernel from its binding kinds (WebGPU's buffer binding types). */
export function bindGroupLayout(device, bindings, label) {
  return device.createBindGroupLayout({
    label,
    entries: bindings.map((type, binding) => ({
      binding,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type },
    })),
  });
}

/**
 * Compiles shader modules and pipelines once per device; `loadShader(family)` returns a
 * family's WGSL text (or a promise of it).
 */
export class Kernels {
  constructor(device, adapterInfo, loadShader) {
    this.device = device;
    this.subgroupMinSize = adapterInfo.subgroupMinSize ?? 0;
    this.features = device.features;
    this.loadShader = loadShader;
    this.modules = new Map();
    this.pipelines = new Map();
  }

  /** The module of a family, with the compiler's messages checked: any message is an error. */
  async module(family) {
    if (!this.modules.has(family)) {
      this.modules.set(family, (async () => {
        const code = await this.loadShader(family);
        const module = this.device.createShaderModule({ label: family, code });
        const info = await module.getCompilationInfo();
        if (info.messages.length > 0) {
          const m = info.messages[0];
          throw new Error(`${family}.wgsl:${m.lineNum}:${m.linePos}: ${m.type}: ${m.message}` +
            (info.messages.length > 1 ? ` (and ${info.messages.length - 1} more)` : ''));
        }
        return module;
      })());
    }
    return this.modules.get(family);
  }

  /** The pipeline of `family::entry` with these override constants, and its group 0 layout. */
  async pipeline(family, entry, bindings, constants) {
    const key = `${family}::${entry} ${JSON.stringify(constants)}`;
    if (!this.pipelines.has(key)) {
      this.pipelines.set(key, (async () => {
        const module = await this.module(family);
        return validated(this.device, key, async () => {
          const layout = bindGroupLayout(this.device, bindings, `${family}::${entry}`);
          const pipeline = await this.device.createComputePipelineAsync({
            label: key,
            layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
            compute: { module, entryPoint: entry, constants },
          });
          return { pipeline, layout };
        });
      })());
    }
    return this.pipelines.get(key);
  }
}

/** Typed view of an output's bytes. */
function typed(dtype, bytes) {
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  switch (dtype) {
    case 'f32': return new Float32Array(buffer);
    case 'i32': return new Int32Array(buffer);
    case 'u32': return new Uint32Array(buffer);
    default: throw new Error(`output dtype ${dtype} is not known`);
  }
}

/**
 * Runs a record on `device` in one compute pass and one submission, and returns its outputs as
 * `{ name, shape, values }` in the record's order.
 */
export async function replay(kernels, record) {
  if (record.format !== FORMAT) {
    throw new Error(`${record.name}: format ${record.format}, expected ${FORMAT}`);
  }
  for (const feature of record.features) {
    if (!kernels.features.has(feature)) {
      throw new Error(`${record.name}: needs WebGPU feature '${feature}', which this device lacks`);
    }
  }
  const lanes = record.needs_subgroup_lanes;
  if (lanes && kernels.subgroupMinSize < lanes) {
    throw new Error(`${record.name}: recorded with subgroup kernels that need subgroups of at ` +
      `least ${lanes} lanes; this adapter's can have ${kernels.subgroupMinSize} ` +
      '(record it with wgdistill on a driver like this one)');
  }
  const device = kernels.device;
  const pipelines = [];
  for (const launch of record.launches) {
    pipelines.push(await kernels.pipeline(
      launch.family, launch.entry, launch.bindings, launch.constants));
  }
  const owned = [];
  try {
    const readbacks = await validated(device, record.name, async () => {
      const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
      const buffers = record.buffers.map((b) => {
        const buffer = device.createBuffer({ size: b.bytes, usage });
        owned.push(buffer);
        device.queue.writeBuffer(buffer, 0, decodeBase64(b.data));
        return buffer;
      });
      const encoder = device.createCommandEncoder({ label: record.name });
      const pass = encoder.beginComputePass();
      record.launches.forEach((launch, i) => {
        const params = decodeBase64(launch.params);
        const uniform = device.createBuffer({
          size: Math.max(16, Math.ceil(params.length / 16) * 16),
          usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        });
        owned.push(uniform);
        device.queue.writeBuffer(uniform, 0, params);
        const entries = [{ binding: 0, resource: { buffer: uniform, size: params.length } }];
        launch.resources.forEach((r, j) => entries.push({
          binding: j + 1,
          resource: { buffer: buffers[r.buffer], offset: r.offset, size: r.size },
        }));
        pass.setPipeline(pipelines[i].pipeline);
        pass.setBindGroup(0, device.createBindGroup({ layout: pipelines[i].layout, entries }));
        pass.dispatchWorkgroups(...launch.grid);
      });
      pass.end();
      const copies = record.outputs.map((o) => {
        const count = o.shape.reduce((a, b) => a * b, 1);
        const bytes = Math.max(4, count * 4);
        const staging = device.createBuffer({
          size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
        });
        owned.push(staging);
        encoder.copyBufferToBuffer(buffers[o.buffer], o.offset, staging, 0, bytes);
        return { output: o, staging, count };
      });
      device.queue.submit([encoder.finish()]);
      return copies;
    });
    const outputs = [];
    for (const r of readbacks) {
      await r.staging.mapAsync(GPUMapMode.READ);
      const bytes = new Uint8Array(r.staging.getMappedRange()).slice(0, r.count * 4);
      r.staging.unmap();
      outputs.push({ name: r.output.name, shape: r.output.shape, values: typed(r.output.dtype, bytes) });
    }
    return outputs;
  } finally {
    for (const b of owned) b.destroy();
  }
}

/**
 * Compares values with a reference as wgdistill's `allclose` does: |got − want| ≤ atol + rtol·|want|
 * everywhere, NaN on either side failing (JSON writes a NaN reference as null).
 */
export function compare(got, want, rtol, atol) {
  let maxAbs = 0;
  let maxRel = 0;
  let firstBad = null;
  if (got.length !== want.length) {
    return { pass: false, maxAbs: NaN, maxRel: NaN, firstBad: `length ${got.length} != ${want.length}` };
  }
  for (let i = 0; i < got.length; i++) {
    const g = got[i];
    const w = want[i] === null ? NaN : want[i];
    const close = Math.abs(g - w) <= atol + rtol * Math.abs(w);
    if (!Number.isNaN(w)) {
      const e = Math.abs(g - w);
      maxAbs = Math.max(maxAbs, e);
      maxRel = Math.max(maxRel, e / Math.max(Math.abs(w), 1e-30));
    }
    if (!close && firstBad === null) firstBad = `index ${i}: got ${g}, want ${w}`;
  }
  return { pass: firstBad === null, maxAbs, maxRel, firstBad };
}

/** Runs a record that carries its expected values and compares all its outputs with them. */
export async function check(kernels, record) {
  const outputs = await replay(kernels, record);
  const got = outputs.flatMap((o) => Array.from(o.values));
  return { outputs, ...compare(got, record.expected ?? [], record.rtol, record.atol) };
}
