// wgdistill's kernels on Dawn, Chrome's WebGPU implementation (Node's `webgpu` package), whose
// WGSL compiler Tint lowers them to Metal and D3D12 in browsers:
//   1. every exported WGSL file compiles with no message at all (errors, warnings, info);
//   2. every compute pipeline the launchers build (each entry point, each combination of its
//      boolean overrides, with the launcher's binding layout) is created without an error;
//   3. every `wgdistill check` case, recorded by `check --replay` (which also runs the check
//      suite through wgpu on the same driver), replays on Dawn and matches its f64 reference at
//      the case's tolerances;
//   4. every golden case of tests/fixtures/golden, recorded by `wgdistill op --replay`, replays
//      on Dawn and matches the golden outputs at the manifest's tolerances.
// Any failure makes the exit status 1. Run by tools/webgpu/check.sh (which picks the driver).
//
//   node tools/webgpu/dawn_check.mjs --wgdistill target/release/wgdistill --work DIR
//        [--golden tests/fixtures/golden] [--backend vulkan]
//
// wgdistill records on wgpu's adapter and Dawn replays on its own: give both the same driver
// (WGPU_BACKEND=vulkan and one VK_ICD_FILENAMES), since launchers pick kernels for the driver
// they run on (the subgroup kernels need subgroups of 8 lanes, SwiftShader's have 4).

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { create, globals } from 'webgpu';

import { parseArgs } from './args.mjs';
import { Kernels, check, compare, openDevice, overrideCombinations, replay } from './replay.mjs';
import { readSafetensors } from './safetensors.mjs';

/** Runs wgdistill, echoing its last line unless `quiet`; on failure its whole output, then throws. */
function wgdistill(bin, argv, quiet = false) {
  try {
    const text = execFileSync(bin, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const lines = text.trim().split('\n');
    if (!quiet) console.log(`  wgdistill ${argv[0]}: ${lines[lines.length - 1]}`);
  } catch (e) {
    process.stdout.write(e.stdout ?? '');
    process.stderr.write(e.stderr ?? '');
    throw new Error(`wgdistill ${argv.join(' ')} failed`);
  }
}

/** Dawn's adapter on `backend`, opened as wgdistill opens one. */
async function device(backend) {
  Object.assign(globalThis, globals);
  const gpu = create([`backend=${backend}`]);
  const adapter = await gpu.requestAdapter();
  if (!adapter) throw new Error(`Dawn found no ${backend} adapter (is VK_ICD_FILENAMES set?)`);
  // The instance must outlive the device: Dawn's Node binding tears its threads down when
  // `gpu` is collected, and a device still in use then dies in a futex error.
  return { gpu, ...(await openDevice(adapter)) };
}

async function main() {
  const opts = parseArgs({ wgdistill: '', work: '', golden: 'tests/fixtures/golden', backend: 'vulkan' },
    ['wgdistill', 'work']);
  const work = path.resolve(opts.work);
  const kernelsDir = path.join(work, 'kernels');
  const checkDir = path.join(work, 'check');
  const goldenDir = path.join(work, 'golden');
  // Only what this script writes: --work may be a folder with other things in it.
  for (const dir of [kernelsDir, checkDir, goldenDir]) fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(goldenDir, { recursive: true });

  console.log('recording with wgdistill:');
  wgdistill(opts.wgdistill, ['shaders', '--export', kernelsDir]);
  wgdistill(opts.wgdistill, ['check', '--replay', checkDir]);
  const manifest = JSON.parse(fs.readFileSync(path.join(opts.golden, 'manifest.json'), 'utf8'));
  for (const c of manifest) {
    const attrs = Object.entries(c.attrs).flatMap(([k, v]) => ['--attr', `${k}=${v}`]);
    wgdistill(opts.wgdistill, ['op', c.op,
      '--input', path.join(opts.golden, `${c.name}.in.safetensors`),
      '--output', path.join(goldenDir, `${c.name}.out.safetensors`),
      '--replay', path.join(goldenDir, `${c.name}.json`), ...attrs], true);
  }
  console.log(`  wgdistill op: recorded ${manifest.length} golden cases`);

  const { gpu, device: dev, info, name, features } = await device(opts.backend);
  console.log(`Dawn on ${name} (${opts.backend}; features: ${features.join(', ') || 'none'})`);
  const kernels = new Kernels(dev, info, (family) =>
    fs.readFileSync(path.join(kernelsDir, `${family}.wgsl`), 'utf8'));
  let failures = 0;
  const fail = (what, e) => {
    failures += 1;
    console.log(`FAIL ${what}: ${e.message ?? e}`);
  };
  // Errors outside every scope, and a lost device, fail the check too.
  dev.addEventListener('uncapturederror', (e) => fail('uncaptured WebGPU error', e.error));
  let finished = false;
  dev.lost.then((lost) => {
    if (!finished) fail('device lost', new Error(lost.message));
  });

  // 1 and 2: every module, every pipeline variant.
  const list = JSON.parse(fs.readFileSync(path.join(kernelsDir, 'kernels.json'), 'utf8'));
  const families = [...new Set(list.map((k) => k.family))];
  for (const family of families) {
    await kernels.module(family).catch((e) => fail(`${family}.wgsl`, e));
  }
  let pipelines = 0;
  for (const k of list) {
    if (k.subgroups && !features.includes('subgroups')) {
      fail(`${k.family}::${k.entry}`, new Error('the adapter lacks subgroups'));
      continue;
    }
    for (const constants of overrideCombinations(k.overrides)) {
      pipelines += 1;
      await kernels.pipeline(k.family, k.entry, k.bindings, constants)
        .catch((e) => fail(`${k.family}::${k.entry} ${JSON.stringify(constants)}`, e));
    }
  }
  console.log(`Tint: ${families.length} WGSL files, ${pipelines} pipelines (${list.length} kernels)`);

  // 3: the check suite against its references.
  const index = JSON.parse(fs.readFileSync(path.join(checkDir, 'index.json'), 'utf8'));
  let passed = 0;
  for (const entry of index) {
    const record = JSON.parse(fs.readFileSync(path.join(checkDir, entry.file), 'utf8'));
    try {
      const v = await check(kernels, record);
      if (v.pass) passed += 1;
      else fail(record.name, new Error(`${v.firstBad} (max abs ${v.maxAbs.toExponential(2)})`));
    } catch (e) {
      fail(record.name, e);
    }
  }
  console.log(`check cases on Dawn: ${passed} of ${index.length} match their f64 references`);

  // The comparison can fail: a KD record whose reference is moved by 1e-3 (relative) must.
  const kd = index.find((e) => e.kernel === 'kd (temperature=4)' && e.shape === '[33, 10]');
  const moved = JSON.parse(fs.readFileSync(path.join(checkDir, kd.file), 'utf8'));
  moved.expected[0] *= 1.001;
  if ((await check(kernels, moved)).pass) fail('self-test', new Error('a moved reference passed'));

  // 4: the golden cases against the golden outputs.
  passed = 0;
  for (const c of manifest) {
    const record = JSON.parse(fs.readFileSync(path.join(goldenDir, `${c.name}.json`), 'utf8'));
    const expected = readSafetensors(path.join(opts.golden, `${c.name}.expected.safetensors`));
    try {
      const outputs = new Map((await replay(kernels, record)).map((o) => [o.name, o]));
      let ok = true;
      // Every golden output, with its shape and values.
      for (const [name, want] of expected) {
        const got = outputs.get(name);
        const v = !got
          ? { pass: false, firstBad: 'the record has no such output' }
          : JSON.stringify(got.shape) !== JSON.stringify(want.shape)
            ? { pass: false, firstBad: `shape ${JSON.stringify(got.shape)}, golden ${JSON.stringify(want.shape)}` }
            : compare(Array.from(got.values), Array.from(want.values), c.rtol, c.atol);
        if (!v.pass) {
          ok = false;
          fail(`${c.name} ${name}`, new Error(v.firstBad));
        }
      }
      if (ok) passed += 1;
    } catch (e) {
      fail(c.name, e);
    }
  }
  console.log(`golden cases on Dawn: ${passed} of ${manifest.length} match tests/fixtures/golden`);

  await dev.queue.onSubmittedWorkDone();
  finished = true;
  dev.destroy();
  void gpu;
  if (failures > 0) {
    console.log(`dawn check: ${failures} failure(s)`);
    process.exit(1);
  }
  console.log('dawn check: all green');
  process.exit(0);
}

main().catch((e) => {
  console.error(`dawn check: ${e.message ?? e}`);
  process.exit(1);
});
