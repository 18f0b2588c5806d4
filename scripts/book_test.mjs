#!/usr/bin/env node
// The static book in a real browser: `make book-test` (after `make book`).
//
//   node scripts/book_test.mjs [--chromium /usr/bin/chromium] [--out build/book-test] [build/book/_build/html]
//
// Serves the built site on 127.0.0.1 (a free port) and crawls it in headless Chromium from
// index.html, following every internal link.  Asserts, for every page:
//   - it loads (HTTP 200) with no JavaScript error;
//   - every resource it requests (CSS, JS, fonts, images) answers 200, and nothing is
//     requested from another host (blocked and reported: the book must work offline);
//   - every <img> is decoded (naturalWidth > 0);
//   - every internal link points at a page that exists and, with a #fragment, at an id on it;
//   - formulas are typeset by MathJax (mjx-container elements, no mjx-merror) where a page has math;
//   - no widget is left as its text repr (VBox(children=…)) or "Error displaying widget".
// Screenshots of the front page, the API page and each chapter's first screen go to
// <out>/screenshots/.  Exit status 0 when all passed, 1 on a failure, 2 when the test broke.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { freePort } from './lab_server.mjs';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.png': 'image/png',
  '.svg': 'image/svg+xml', '.woff': 'font/woff', '.woff2': 'font/woff2', '.ttf': 'font/ttf', '.json': 'application/json',
  '.ipynb': 'application/json', '.txt': 'text/plain', '.inv': 'application/octet-stream', '.gif': 'image/gif',
  '.jpg': 'image/jpeg', '.ico': 'image/x-icon', '.map': 'application/json', '.md': 'text/plain', '.rst': 'text/plain' };

function parseArgs(argv) {
  const opts = { chromium: '/usr/bin/chromium', out: path.join(REPO, 'build/book-test'),
    site: path.join(REPO, 'build/book/_build/html') };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--chromium') opts.chromium = argv[++i];
    else if (argv[i] === '--out') opts.out = path.resolve(argv[++i]);
    else if (argv[i].startsWith('--')) throw new Error(`unknown option ${argv[i]}`);
    else opts.site = path.resolve(argv[i]);
  }
  return opts;
}

function serve(root, port) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    let file = path.join(root, decodeURIComponent(url.pathname));
    if (!file.startsWith(root)) { res.writeHead(403).end(); return; }
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
    if (!fs.existsSync(file)) { res.writeHead(404).end('not found'); return; }
    res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(path.join(opts.site, 'index.html'))) throw new Error(`no book at ${opts.site}: run make book`);
  const shots = path.join(opts.out, 'screenshots');
  fs.rmSync(shots, { recursive: true, force: true });
  fs.mkdirSync(shots, { recursive: true });
  const t0 = Date.now();
  const port = await freePort();
  const server = await serve(opts.site, port);
  const base = `http://127.0.0.1:${port}/`;
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'memlib-book-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1280, height: 900 },
  });
  const failures = [];
  const blocked = new Set();
  await context.route('**/*', (route) => {
    const u = new URL(route.request().url());
    if (['http:', 'https:', 'ws:', 'wss:'].includes(u.protocol) && !(u.hostname === '127.0.0.1' && u.port === String(port))) {
      blocked.add(u.href);
      return route.abort('blockedbyclient');
    }
    return route.continue();
  });
  const page = await context.newPage();
  const pageIds = new Map();          // page path -> Set of element ids
  const linksTo = [];                 // {from, href, path, fragment}
  const queue = ['index.html'];
  const seen = new Set(queue);
  let images = 0;
  let mathPages = 0;
  try {
    while (queue.length) {
      const rel = queue.shift();
      const bad = [];
      const jsErrors = [];
      const onResponse = (r) => { if (r.status() >= 400) bad.push(`${r.status()} ${r.url().replace(base, '')}`); };
      const onFailed = (r) => {
        const u = r.url();
        if (u.startsWith(base)) bad.push(`failed ${u.replace(base, '')}: ${r.failure()?.errorText}`);
      };
      const onError = (e) => jsErrors.push(String(e).split('\n')[0]);
      page.on('response', onResponse);
      page.on('requestfailed', onFailed);
      page.on('pageerror', onError);
      const resp = await page.goto(base + rel, { waitUntil: 'load', timeout: 60_000 });
      if (!resp || resp.status() !== 200) failures.push(`${rel}: HTTP ${resp ? resp.status() : 'no response'}`);
      const hasMath = await page.evaluate(() => document.querySelectorAll('.math, .MathJax_Preview, script[type^="math/tex"]').length);
      if (hasMath) {
        mathPages++;
        try {
          await page.waitForFunction(() => window.MathJax && window.MathJax.startup && window.MathJax.startup.promise
            && document.querySelectorAll('mjx-container').length > 0, null, { timeout: 30_000 });
          await page.evaluate(() => window.MathJax.startup.promise);
        } catch {
          failures.push(`${rel}: has ${hasMath} formulas but MathJax typeset none within 30 s`);
        }
      }
      const info = await page.evaluate(() => ({
        ids: [...document.querySelectorAll('[id]')].map((e) => e.id)
          .concat([...document.querySelectorAll('a[name]')].map((e) => e.getAttribute('name'))),
        imgs: [...document.images].map((i) => ({ src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0 })),
        links: [...document.querySelectorAll('a[href]')].map((a) => a.getAttribute('href')),
        merror: document.querySelectorAll('mjx-merror').length,
        text: document.body.innerText,
      }));
      page.off('response', onResponse);
      page.off('requestfailed', onFailed);
      page.off('pageerror', onError);
      pageIds.set(rel, new Set(info.ids));
      for (const b of bad) failures.push(`${rel}: resource ${b}`);
      for (const e of jsErrors) failures.push(`${rel}: JavaScript error: ${e}`);
      for (const im of info.imgs) {
        images++;
        if (!im.ok) failures.push(`${rel}: image does not load: ${String(im.src).slice(0, 100)}`);
      }
      if (info.merror) failures.push(`${rel}: ${info.merror} formula(s) MathJax could not typeset`);
      if (/\b(VBox|HBox)\(children=/.test(info.text)) failures.push(`${rel}: a widget shows as its text repr (VBox(children=…))`);
      if (/Error displaying widget/.test(info.text)) failures.push(`${rel}: "Error displaying widget"`);
      for (const href of info.links) {
        const u = new URL(href, base + rel);
        if (u.protocol === 'mailto:' || u.protocol === 'javascript:') continue;
        if (u.origin !== new URL(base).origin) continue;          // an external link: not followed
        const target = decodeURIComponent(u.pathname.slice(1)) || 'index.html';
        linksTo.push({ from: rel, href, target, fragment: decodeURIComponent(u.hash.slice(1)) });
        if (target.endsWith('.html') && !seen.has(target)) {
          seen.add(target);
          queue.push(target);
        }
      }
      const stem = rel.replace(/\.html$/, '').replace(/[^\w.-]/g, '_');
      if (/^(index|api|\d\d_[\w-]+)\.html$/.test(rel)) await page.screenshot({ path: path.join(shots, `${stem}.png`) });
      process.stdout.write(`  ${rel}: ${info.imgs.length} images, ${info.links.length} links${hasMath ? `, ${hasMath} formulas` : ''}\n`);
    }
    // links: the target exists; a fragment names an id on it
    let checked = 0;
    for (const l of linksTo) {
      checked++;
      const file = path.join(opts.site, l.target);
      if (!fs.existsSync(file)) { failures.push(`${l.from}: broken link ${l.href} (no ${l.target})`); continue; }
      if (l.fragment && l.target.endsWith('.html')) {
        const ids = pageIds.get(l.target);
        if (ids && !ids.has(l.fragment)) failures.push(`${l.from}: link ${l.href}: no #${l.fragment} on ${l.target}`);
      }
    }
    for (const u of blocked) failures.push(`a request to another host (the book must work offline): ${u}`);
    const seconds = ((Date.now() - t0) / 1000).toFixed(1);
    console.log(`\nbook test: ${seen.size} pages, ${images} images, ${checked} internal links, ${mathPages} pages with math; `
      + `${failures.length} failure(s) in ${seconds} s; screenshots in ${path.relative(REPO, shots)}/`);
    const summary = { pages: [...seen], images, links: checked, mathPages, failures, seconds: Number(seconds) };
    fs.writeFileSync(path.join(opts.out, 'summary.json'), `${JSON.stringify(summary, null, 1)}\n`);
  } finally {
    await context.close();
    server.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  for (const f of failures.slice(0, 200)) console.log(`FAIL ${f}`);
  if (failures.length > 200) console.log(`… and ${failures.length - 200} more`);
  process.exitCode = failures.length ? 1 : 0;
}

main().catch((e) => {
  console.error(`book test: ${e.stack || e}`);
  process.exit(2);
});
