// The browser example (examples/web) in headless Chromium's WebGPU: serves the repository with
// the exported kernels and recorded check cases of a dawn_check.mjs work folder in place of
// examples/web/kernels and examples/web/records, opens the page on every case, and fails unless
// each one (the KD cases among them) matches its f64 reference.
//
//   node tools/webgpu/browser_check.mjs --work DIR [--chromium /usr/bin/chromium] [--cases '*']
//        [--screenshot PAGE.png]

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { parseArgs } from './args.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const TYPES = { '.html': 'text/html', '.mjs': 'text/javascript', '.js': 'text/javascript',
  '.json': 'application/json', '.wgsl': 'text/plain' };

/** A static server of the repository, with the generated folders mapped from `work`. */
function serve(work) {
  const overlay = [
    ['/examples/web/kernels/', path.join(work, 'kernels')],
    ['/examples/web/records/', path.join(work, 'check')],
  ];
  const server = http.createServer((req, res) => {
    let url = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    if (url.endsWith('/')) url += 'index.html';
    const mapped = overlay.find(([prefix]) => url.startsWith(prefix));
    const file = mapped ? path.join(mapped[1], url.slice(mapped[0].length)) : path.join(root, url);
    if (url.includes('..') || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404);
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function main() {
  const opts = parseArgs({ work: '', chromium: '/usr/bin/chromium', cases: '*', screenshot: '' },
    ['work']);
  const server = await serve(path.resolve(opts.work));
  const browser = await chromium.launch({
    executablePath: opts.chromium,
    // WebGPU on Linux is behind this flag; without a GPU Chromium runs it on SwiftShader. The
    // others keep Chromium off this machine's closed network.
    args: ['--enable-unsafe-webgpu', '--no-sandbox', '--no-first-run', '--disable-sync',
      '--disable-background-networking', '--disable-component-update'],
  });
  let failed = true;
  try {
    const page = await browser.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(e.message));
    const url = `http://127.0.0.1:${server.address().port}/examples/web/?cases=${encodeURIComponent(opts.cases)}`;
    await page.goto(url);
    await page.waitForSelector('body[data-state="done"], body[data-state="error"]', { timeout: 300_000 });
    if (opts.screenshot) await page.screenshot({ path: opts.screenshot, fullPage: true });
    const summary = JSON.parse(await page.textContent('#summary'));
    if (summary.error) throw new Error(`the page failed: ${summary.error}`);
    const bad = summary.results.filter((r) => !r.pass);
    for (const r of bad) console.log(`FAIL ${r.case}: ${r.error ?? `max abs ${r.maxAbs}`}`);
    for (const e of pageErrors) console.log(`FAIL page error: ${e}`);
    // With every case asked for, the page must have run every recorded one.
    const recorded = JSON.parse(fs.readFileSync(path.join(opts.work, 'check', 'index.json'), 'utf8'));
    const missing = opts.cases === '*' && summary.results.length !== recorded.length;
    if (missing) console.log(`FAIL the page ran ${summary.results.length} of ${recorded.length} cases`);
    const kd = summary.results.filter((r) => r.case.startsWith('kd '));
    for (const r of kd.filter((r) => r.reference !== 0).slice(0, 4)) {
      console.log(`  ${r.case}: loss ${r.loss} on the GPU, ${r.reference} on the CPU`);
    }
    console.log(`Chromium (${summary.adapter}): ${summary.results.length - bad.length} of ` +
      `${summary.results.length} cases match, ${kd.length} of them KD`);
    failed = bad.length > 0 || pageErrors.length > 0 || missing || summary.results.length === 0 ||
      (opts.cases === '*' && kd.length === 0);
  } finally {
    await browser.close();
    server.close();
  }
  if (failed) {
    console.log('browser check: FAILED');
    process.exit(1);
  }
  console.log('browser check: all green');
}

main().catch((e) => {
  console.error(`browser check: ${e.message ?? e}`);
  process.exit(1);
});
