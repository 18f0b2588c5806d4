#!/usr/bin/env node
// The course in a real browser: `make browser-test`.
//
//   node scripts/browser_test.mjs --jupyter .venv/bin/jupyter [--out build/browser-test]
//        [--timeout 1200] [--chromium /usr/bin/chromium] [--roundtrip-only] [notebooks/NN_name.ipynb ...]
//
// Starts a private JupyterLab (scripts/lab_server.mjs: 127.0.0.1, free port, random token,
// a scratch copy of notebooks/), and for every notebook, in headless Chromium driven by
// playwright-core:
//   1. opens it, waits for its kernel, and checks that JupyterLab did not mark it modified;
//      saves it (JupyterLab's own save command) and checks that the file is byte-identical
//      to the committed one;
//   2. runs all cells ("Run All") and waits for the kernel to be idle;
//   3. asserts: no error and no stderr output in any cell; every widget output renders as
//      a live widget (not "Error displaying widget", not a text repr such as VBox(children=…));
//      every explorer (the .memlib-explorer box) shows no warning after Run All;
//   4. in each explorer: sets one control (the first number field to half its value, or +1
//      from 1; else the next option of the first dropdown; else the first checkbox) and checks
//      that the displayed numbers change, timing the control change to the new numbers and to
//      the new image being decoded; types an invalid value (-1) into the first number field
//      and checks that the explorer's "⚠" message appears; restores the value and checks that
//      the message goes away.  An explorer that Run All left showing a warning (a failure of
//      step 3) is first brought back, if halving one of its number fields does it, so that
//      step 4 still runs on it.
// Screenshots of every explorer (after Run All, after the change, with the invalid value)
// go to <out>/screenshots/ (git-ignored), a JSON summary to <out>/summary.json.
// Every request to a host other than 127.0.0.1 is blocked and reported as a failure.
// --roundtrip-only: step 1 alone (seconds per notebook).
// Exit status: 0 when every check passed, 1 otherwise, 2 when the run itself broke.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { chromium } from 'playwright-core';
import { startLab } from './lab_server.mjs';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

function parseArgs(argv) {
  const opts = { jupyter: path.join(REPO, '.venv/bin/jupyter'), out: path.join(REPO, 'build/browser-test'),
    timeout: 1200, chromium: '/usr/bin/chromium', notebooks: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--jupyter') opts.jupyter = argv[++i];
    else if (a === '--out') opts.out = path.resolve(argv[++i]);
    else if (a === '--timeout') opts.timeout = Number(argv[++i]);
    else if (a === '--chromium') opts.chromium = argv[++i];
    else if (a === '--roundtrip-only') opts.roundtripOnly = true;
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else opts.notebooks.push(a);
  }
  if (!opts.notebooks.length) {
    opts.notebooks = fs.readdirSync(path.join(REPO, 'notebooks')).filter((f) => f.endsWith('.ipynb')).sort()
      .map((f) => `notebooks/${f}`);
  }
  opts.notebooks = opts.notebooks.map((p) => path.relative(REPO, path.resolve(p)));
  return opts;
}

// how long an explorer may take to answer one change (a loaded 2-core machine: ~2 s)
const WAIT_MS = 30_000;
const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;
const log = (...a) => console.log(...a);

/** Launch headless Chromium with a fresh profile; every non-loopback request is blocked. */
export async function launchBrowser(chromiumPath, profileDir, blocked) {
  const context = await chromium.launchPersistentContext(profileDir, {
    executablePath: chromiumPath, headless: true, args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 1600 }, deviceScaleFactor: 1,
  });
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (['http:', 'https:', 'ws:', 'wss:'].includes(url.protocol) && url.hostname !== '127.0.0.1') {
      blocked.push(url.href);
      return route.abort('blockedbyclient');
    }
    return route.continue();
  });
  return context;
}

// ---- in-page helpers (run inside JupyterLab through window.jupyterapp) -------------------

/** Wait until the notebook `nbPath` is open, its model loaded and its kernel idle. */
async function openNotebook(page, lab, nbPath, timeoutMs) {
  await page.goto(`${lab.base}/lab/tree/${nbPath}?reset&token=${lab.token}`, { timeout: timeoutMs });
  await page.waitForFunction((p) => {
    const app = window.jupyterapp;
    if (!app) return false;
    const panel = [...app.shell.widgets('main')].find((w) => w.context && w.context.path === p);
    if (!panel || !panel.context.isReady || !panel.sessionContext.session) return false;
    const kernel = panel.sessionContext.session.kernel;
    return kernel && kernel.status === 'idle' && kernel.connectionStatus === 'connected';
  }, nbPath, { timeout: timeoutMs, polling: 250 });
  // JupyterLab then copies the kernel's spec (kernelspec) and info reply (language_info) into
  // the notebook's metadata: wait until it has, so that the "modified on open" check is sound
  await page.evaluate(async (p) => {
    const panel = [...window.jupyterapp.shell.widgets('main')].find((w) => w.context && w.context.path === p);
    const kernel = panel.sessionContext.session.kernel;
    const [info, spec] = [await kernel.info, await kernel.spec];
    window.__memlibKernel = { display: spec.display_name, version: info.language_info.version };
  }, nbPath);
  try {
    await page.waitForFunction((p) => {
      const panel = [...window.jupyterapp.shell.widgets('main')].find((w) => w.context && w.context.path === p);
      const ks = panel.model.getMetadata('kernelspec') || {};
      const li = panel.model.getMetadata('language_info') || {};
      return ks.display_name === window.__memlibKernel.display && li.version === window.__memlibKernel.version;
    }, nbPath, { timeout: 30_000, polling: 100 });
  } catch {
    throw new Error(`JupyterLab did not store the kernel's kernelspec/language_info in ${nbPath} within 30 s`);
  }
  await page.waitForTimeout(250);
}

const PANEL = `const panel = [...window.jupyterapp.shell.widgets('main')]
  .find((w) => w.context && w.context.path === nbPath);`;

/** Run `body` in the page with `panel` bound to the notebook's panel (and `arg`). */
function inPanel(page, nbPath, body, arg) {
  // eslint-disable-next-line no-new-func
  return page.evaluate(([src, p, a]) => new Function('nbPath', 'arg', src)(p, a), [`${PANEL}\n${body}`, nbPath, arg]);
}

/** The notebook's code cells: index (among all cells), execution count, state, first line. */
function cellStatus(page, nbPath) {
  return inPanel(page, nbPath, `
    return panel.content.widgets.map((cell, index) => {
      const m = cell.model;
      const src = m.sharedModel.getSource();
      return { index, type: m.type, count: m.type === 'code' ? m.executionCount : null,
        running: m.type === 'code' && (m.executionState === 'running'
          || (cell.promptNode && cell.promptNode.textContent.includes('*'))),
        first: src.split('\\n').find((l) => l.trim() && !l.startsWith('# NBVAL')) || src.split('\\n')[0],
        outputs: m.type === 'code' ? m.outputs.toJSON() : [] };
    });`);
}

function describeCell(c) {
  return `cell ${c.index}${c.count ? ` [In ${c.count}]` : ''} «${(c.first || '').trim().slice(0, 70)}»`;
}

// ---- the checks for one notebook ----------------------------------------------------------

async function roundTrip(page, lab, nbPath, result) {
  const dirty = await inPanel(page, nbPath, 'return panel.context.model.dirty;');
  if (dirty) {
    result.failures.push('opening it in JupyterLab marks it modified (JupyterLab rewrites its metadata on '
      + 'open: the stored kernelspec/language_info differ from what the kernel reports)');
  }
  await inPanel(page, nbPath, `
    window.jupyterapp.shell.activateById(panel.id);
    return panel.context.save();`);
  const saved = path.join(lab.root, nbPath);
  const committed = path.join(REPO, nbPath);
  if (!fs.readFileSync(saved).equals(fs.readFileSync(committed))) {
    let diff = '';
    try {
      execFileSync('diff', ['-u', committed, saved], { encoding: 'utf8' });
    } catch (e) { diff = e.stdout || String(e); }
    result.failures.push(`saving it in JupyterLab without a change rewrites the file:\n${
      diff.split('\n').slice(0, 30).map((l) => `      ${l}`).join('\n')}`);
  }
  result.dirtyOnOpen = dirty;
}

/**
 * What a reader sees on opening the notebook, before running it: widget outputs must show
 * their static stand-in, not "Error displaying widget" nor a text repr.  Screenshots each.
 */
async function checkStoredWidgetOutputs(page, nbPath, stem, shots, result) {
  const cells = await cellStatus(page, nbPath);
  const isWidget = (o) => o.data && (o.data['application/vnd.jupyter.widget-view+json']
    || /^\[Interactive|Box\(children=/.test([].concat(o.data['text/plain'] || '').join('')));
  const views = await widgetViews(page, nbPath);
  for (const c of cells) {
    if (!c.outputs.some(isWidget)) continue;
    const v = views[c.index];
    const file = path.join(shots, `${stem}__cell${String(c.index).padStart(2, '0')}__0-before-run.png`);
    await page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell').nth(c.index).locator('.jp-OutputArea')
      .screenshot({ path: file }).catch(() => {});
    if (v && v.errorText) result.failures.push(`${describeCell(c)}: opened before running, its stored output shows "${v.errorText.trim()}" (no static stand-in)`);
    if (v && v.repr) result.failures.push(`${describeCell(c)}: opened before running, its stored output is a text repr (VBox(children=…)), not a static stand-in`);
  }
}

async function runAll(page, nbPath, timeoutMs, result) {
  const t0 = Date.now();
  await inPanel(page, nbPath, `
    window.jupyterapp.shell.activateById(panel.id);
    window.__memlibRunAll = { done: false };
    window.jupyterapp.commands.execute('notebook:run-all-cells')
      .then((ok) => { window.__memlibRunAll = { done: true, ok }; },
            (e) => { window.__memlibRunAll = { done: true, error: String(e) }; });
    return true;`);
  let lastPrint = Date.now();
  for (;;) {
    const state = await page.evaluate(() => window.__memlibRunAll);
    const cells = await cellStatus(page, nbPath);
    const code = cells.filter((c) => c.type === 'code');
    const running = cells.find((c) => c.running);
    if (state.done) {
      if (state.error) result.failures.push(`Run All raised in the page: ${state.error}`);
      break;
    }
    if (Date.now() - t0 > timeoutMs) {
      result.failures.push(`Run All did not finish within ${timeoutMs / 1000} s; still running: ${
        running ? describeCell(running) : '(no cell shows [*])'}`);
      return false;
    }
    if (Date.now() - lastPrint > 30_000) {
      lastPrint = Date.now();
      log(`    … ${secs(Date.now() - t0)}: ${code.filter((c) => c.count).length}/${code.length} code cells run${
        running ? `, running ${describeCell(running)}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  // the kernel must be idle again, and the widget views must have caught up with their state
  await page.waitForFunction((p) => {
    const panel = [...window.jupyterapp.shell.widgets('main')].find((w) => w.context && w.context.path === p);
    return panel.sessionContext.session.kernel.status === 'idle';
  }, nbPath, { timeout: 120_000, polling: 250 });
  await page.waitForTimeout(1500);
  result.runAllSeconds = (Date.now() - t0) / 1000;
  return true;
}

function checkOutputs(cells, result) {
  for (const c of cells.filter((x) => x.type === 'code')) {
    if (c.count === null) {
      result.failures.push(`${describeCell(c)} was not run (Run All stopped before it)`);
      continue;
    }
    for (const o of c.outputs) {
      if (o.output_type === 'error') {
        result.failures.push(`${describeCell(c)} raised ${o.ename}: ${String(o.evalue).split('\n')[0].slice(0, 300)}`);
      } else if (o.output_type === 'stream' && o.name === 'stderr') {
        const text = Array.isArray(o.text) ? o.text.join('') : o.text;
        result.failures.push(`${describeCell(c)} wrote to stderr: ${text.trim().split('\n').slice(-1)[0].slice(0, 300)}`);
      }
    }
  }
}

/** Per cell: does its output area show widget error text, a widget text repr, live views? */
function widgetViews(page, nbPath) {
  return inPanel(page, nbPath, `
    return panel.content.widgets.map((cell) => {
      const out = cell.node.querySelector('.jp-OutputArea');
      if (!out) return null;
      const text = out.innerText || '';
      const err = text.match(/(Error displaying widget|Error rendering widget|Loading widget|model not found)[^\\n]*/);
      return { errorText: err ? err[0] : null,
               repr: /\\b(VBox|HBox|Box|Output)\\(children=/.test(text),
               views: out.querySelectorAll('.jupyter-widgets.widget-container, .jupyter-widgets.widget-inline-hbox, .memlib-explorer').length,
               explorers: out.querySelectorAll('.memlib-explorer').length };
    });`);
}

/** DOM checks on widget outputs after Run All: live views, no error text, no text repr. */
async function checkWidgetViews(page, nbPath, cells, result) {
  const views = await widgetViews(page, nbPath);
  let widgetOutputs = 0;
  for (const c of cells) {
    const v = views[c.index];
    if (!v) continue;
    const hasView = c.outputs.some((o) => o.data && o.data['application/vnd.jupyter.widget-view+json']);
    if (hasView) widgetOutputs++;
    if (v.errorText) result.failures.push(`${describeCell(c)}: the widget does not render: "${v.errorText.trim()}"`);
    if (v.repr) result.failures.push(`${describeCell(c)}: a widget shows as its text repr (VBox(children=…)), not live`);
    if (hasView && !v.views) result.failures.push(`${describeCell(c)}: a widget output has no live widget view in the page`);
  }
  result.widgetOutputs = widgetOutputs;
}

/** Everything an explorer shows: message, numbers, image (src and size), controls. */
function explorerState(page, nbPath, k) {
  return inPanel(page, nbPath, `
    const ex = panel.node.querySelectorAll('.memlib-explorer')[arg];
    const msg = ex.querySelector('.memlib-explorer-message');
    const pre = ex.querySelector('pre');
    const img = ex.querySelector('img');
    const cell = ex.closest('.jp-Cell');
    const title = ex.querySelector(':scope > .widget-html b');
    return { message: msg ? msg.innerText.trim() : null, text: pre ? pre.innerText : '',
      imgSrc: img && img.offsetParent !== null ? img.src : null,
      img: img ? { natural: [img.naturalWidth, img.naturalHeight], shown: [img.clientWidth, img.clientHeight] } : null,
      cellIndex: panel.content.widgets.findIndex((c) => c.node === cell),
      title: title ? title.innerText : '',
      numbers: ex.querySelectorAll('input[type=number]').length,
      selects: ex.querySelectorAll('select').length,
      checkboxes: ex.querySelectorAll('input[type=checkbox]').length };`, k);
}

/**
 * Change one control of explorer k and time it.  Installs listeners in the page that note
 * when the control fires (keydown Enter / change) and when the explorer's image has a new
 * src and that image is decoded; returns those times (ms, performance.now()).
 */
async function armTimer(page, nbPath, k) {
  await inPanel(page, nbPath, `
    const ex = panel.node.querySelectorAll('.memlib-explorer')[arg];
    const img = ex.querySelector('img');
    const pre = ex.querySelector('pre');
    const msg = ex.querySelector('.memlib-explorer-message');
    const t = { start: null, text: null, src: null, decoded: null, message: null,
                oldSrc: img ? img.src : null, oldText: pre ? pre.innerText : null,
                oldMessage: msg ? msg.innerText : null };
    window.__memlibTimer = t;
    const mark = () => { if (t.start === null) t.start = performance.now(); };
    ex.addEventListener('keydown', (e) => { if (e.key === 'Enter') mark(); }, { capture: true });
    ex.addEventListener('change', mark, { capture: true });
    const obs = new MutationObserver(() => {
      const p = ex.querySelector('pre');
      if (t.text === null && p && p.innerText !== t.oldText) t.text = performance.now();
      const im = ex.querySelector('img');
      if (t.src === null && im && im.src && im.src !== t.oldSrc) {
        t.src = performance.now();
        // decode the new picture (a detached copy: the element may still be display:none)
        const copy = new Image();
        copy.src = im.src;
        copy.decode().then(() => { t.decoded = performance.now(); }, () => { t.decoded = -1; });
      }
      const m = ex.querySelector('.memlib-explorer-message');
      if (t.message === null && m && m.innerText !== t.oldMessage) t.message = performance.now();
    });
    obs.observe(ex, { subtree: true, childList: true, attributes: true, characterData: true });
    t.stop = () => obs.disconnect();
    return true;`, k);
}

async function readTimer(page) {
  return page.evaluate(() => {
    const t = window.__memlibTimer;
    t.stop();
    return { start: t.start, text: t.text, src: t.src, decoded: t.decoded };
  });
}

async function setNumber(locator, value) {
  await locator.scrollIntoViewIfNeeded();
  await locator.fill(String(value));
  await locator.press('Enter');
}

/**
 * An explorer left showing a warning: try each number field once at half its value (or 1),
 * keeping the first change that clears the warning.  Returns what it changed, or null.
 */
async function recover(page, nbPath, k, ex) {
  const fields = ex.locator('input[type=number]');
  const n = await fields.count();
  for (let i = 0; i < n; i++) {
    const field = fields.nth(i);
    const v = Number(await field.inputValue());
    const next = v > 1 ? Math.floor(v / 2) : 1;
    if (next === v) continue;
    const label = await field.evaluate((e) => e.closest('.widget-inline-hbox')?.innerText.trim() || '?');
    const old = (await explorerState(page, nbPath, k)).message;
    await setNumber(field, next);
    try {
      await page.waitForFunction(([kk, m]) => {
        const e = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .memlib-explorer')[kk];
        const msg = e && e.querySelector('.memlib-explorer-message');
        return msg && msg.innerText.trim() !== m;
      }, [k, old], { timeout: 10_000, polling: 50 });
    } catch { /* the same message again */ }
    await page.waitForTimeout(500);
    if (!(await explorerState(page, nbPath, k)).message) return `${label}: ${v} → ${next}`;
  }
  return null;
}

async function exploreOne(page, nbPath, k, stem, shots, result, cells) {
  const ex = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .memlib-explorer').nth(k);
  await ex.scrollIntoViewIfNeeded();
  let before = await explorerState(page, nbPath, k);
  const cell = cells[before.cellIndex] || { index: before.cellIndex };
  const where = `explorer ${k + 1} (${describeCell(cell)}${before.title ? `, "${before.title}"` : ''})`;
  const rec = { notebook: nbPath, cell: before.cellIndex, title: before.title, image: before.img };
  result.explorers.push(rec);
  const shot = async (what) => {
    const file = path.join(shots, `${stem}__cell${String(before.cellIndex).padStart(2, '0')}__${what}.png`);
    await ex.screenshot({ path: file });
    return path.relative(REPO, file);
  };
  rec.screenshots = [await shot('1-after-run-all')];
  if (before.message) result.failures.push(`${where}: after Run All it shows a warning: "${before.message}"`);
  else if (!before.text.trim() && !before.imgSrc) result.failures.push(`${where}: after Run All it shows no numbers and no figure`);
  if (before.message && before.numbers) {
    // already a failure; bring it back to a valid state so that the checks below still run
    rec.recovered = await recover(page, nbPath, k, ex);
    if (rec.recovered) {
      before = await explorerState(page, nbPath, k);
      rec.image = before.img;
      rec.screenshots.push(await shot('1b-recovered'));
    }
  }

  // 1. one control changes the numbers
  const num = ex.locator('input[type=number]').first();
  const sel = ex.locator('select').first();
  const chk = ex.locator('input[type=checkbox]').first();
  await armTimer(page, nbPath, k);
  let control;
  let original = null;
  if (before.numbers) {
    original = await num.inputValue();
    const v = Number(original);
    const next = v > 1 ? Math.floor(v / 2) : v + 1;    // smaller stays within a model's limits
    control = `number field ${await num.evaluate((e) => e.closest('.widget-inline-hbox')?.innerText.trim() || '?')}: ${original} → ${next}`;
    await setNumber(num, next);
  } else if (before.selects) {
    const opts = await sel.locator('option').evaluateAll((os) => os.map((o) => o.value));
    const cur = await sel.inputValue();
    const next = opts[(opts.indexOf(cur) + 1) % opts.length];
    control = `dropdown ${await sel.evaluate((e) => e.closest('.widget-inline-hbox')?.innerText.split('\n')[0].trim() || '?')}: option ${cur} → ${next}`;
    await sel.selectOption(next);
  } else if (before.checkboxes) {
    control = 'checkbox';
    await chk.click();
  } else {
    result.failures.push(`${where}: has no number field, dropdown or checkbox to change`);
    await readTimer(page);
    return;
  }
  rec.control = control;
  try {   // the new numbers (or a message) ...
    await page.waitForFunction(() => {
      const t = window.__memlibTimer;
      return t.text !== null || (t.message !== null && performance.now() - t.message > 2000);
    }, null, { timeout: WAIT_MS, polling: 50 });
    // ... then the new picture, when there was one
    await page.waitForFunction(() => {
      const t = window.__memlibTimer;
      return t.text === null || !t.oldSrc || t.decoded !== null;
    }, null, { timeout: 10_000, polling: 50 });
  } catch {
    // fall through: the state below says what did not change
  }
  const timer = await readTimer(page);
  const after = await explorerState(page, nbPath, k);
  rec.screenshots.push(await shot('2-after-change'));
  if (after.message) {
    result.failures.push(`${where}: setting ${control} shows a warning: "${after.message}"`);
  } else if (after.text === before.text) {
    result.failures.push(`${where}: setting ${control} did not change the displayed numbers within ${WAIT_MS / 1000} s`);
  }
  if (timer.start !== null && timer.text !== null) rec.textMs = Math.round(timer.text - timer.start);
  if (timer.start !== null && timer.decoded > 0) rec.imageMs = Math.round(timer.decoded - timer.start);
  if (before.imgSrc && !after.message && timer.decoded === null) {
    rec.note = 'the figure did not change (no new image within 10 s of the new numbers)';
  }

  // 2. an invalid value shows the explorer's message, and the explorer recovers
  if (!before.numbers) {
    rec.invalid = 'not tested: no free-form number field (every dropdown/checkbox value is valid)';
  } else {
    const value = await num.inputValue();
    await setNumber(num, -1);
    try {
      await page.waitForFunction((kk) => {
        const e = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .memlib-explorer')[kk];
        const m = e && e.querySelector('.memlib-explorer-message');
        return m && m.innerText.trim().length > 0;
      }, k, { timeout: WAIT_MS, polling: 50 });
    } catch { /* reported below */ }
    const bad = await explorerState(page, nbPath, k);
    rec.screenshots.push(await shot('3-invalid-value'));
    if (!bad.message || !bad.message.startsWith('⚠')) {
      result.failures.push(`${where}: typing -1 into the first number field shows no "⚠" message`);
    } else {
      rec.invalid = bad.message;
    }
    await setNumber(num, original);
    if (!before.message) {   // it was valid with that value: the message must go again
      try {
        await page.waitForFunction((kk) => {
          const e = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .memlib-explorer')[kk];
          const m = e && e.querySelector('.memlib-explorer-message');
          return m && m.innerText.trim() === '';
        }, k, { timeout: WAIT_MS, polling: 50 });
      } catch {
        result.failures.push(`${where}: after restoring ${original} (was ${value}) the warning stays: `
          + `"${(await explorerState(page, nbPath, k)).message}"`);
      }
    }
  }
}

async function testNotebook(context, lab, nbPath, opts, shots) {
  const result = { notebook: nbPath, failures: [], explorers: [] };
  const t0 = Date.now();
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  try {
    await openNotebook(page, lab, nbPath, 180_000);
    result.openSeconds = (Date.now() - t0) / 1000;
    await roundTrip(page, lab, nbPath, result);
    log(`  opened in ${secs(Date.now() - t0)}; modified on open: ${result.dirtyOnOpen ? 'YES' : 'no'}; `
      + `save round trip: ${result.failures.length ? 'CHANGED' : 'identical'}`);
    const stem = path.basename(nbPath, '.ipynb');
    await checkStoredWidgetOutputs(page, nbPath, stem, shots, result);
    if (!opts.roundtripOnly && await runAll(page, nbPath, opts.timeout * 1000, result)) {
      log(`  Run All: ${result.runAllSeconds.toFixed(1)} s`);
      const cells = await cellStatus(page, nbPath);
      checkOutputs(cells, result);
      await checkWidgetViews(page, nbPath, cells, result);
      const n = await page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .memlib-explorer').count();
      result.explorerCount = n;
      for (let k = 0; k < n; k++) {
        try {
          await exploreOne(page, nbPath, k, stem, shots, result, cells);
        } catch (e) {
          result.failures.push(`explorer ${k + 1}: the test broke: ${String(e).split('\n')[0]}`);
        }
        const rec = result.explorers[result.explorers.length - 1];
        if (rec) {
          log(`  explorer cell ${rec.cell} ${rec.title ? `"${rec.title}"` : ''}: `
            + `${rec.recovered ? `(brought back by ${rec.recovered}) ` : ''}${rec.control || '-'}; `
            + `numbers after ${rec.textMs ?? '?'} ms, image after ${rec.imageMs ?? '?'} ms; image `
            + `${rec.image ? `${rec.image.natural.join('×')} px shown at ${rec.image.shown.join('×')}` : 'none'}`
            + `${rec.note ? `; NOTE: ${rec.note}` : ''}`);
        }
      }
    }
  } catch (e) {
    result.failures.push(`the test broke: ${String(e).split('\n').slice(0, 3).join(' ')}`);
  } finally {
    for (const e of pageErrors) result.failures.push(`JavaScript error in the page: ${e.slice(0, 300)}`);
    try {
      await inPanel(page, nbPath, 'return panel.sessionContext.shutdown();');
    } catch { /* the page may be gone */ }
    await page.close();
  }
  result.seconds = (Date.now() - t0) / 1000;
  return result;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(opts.jupyter)) throw new Error(`no jupyter at ${opts.jupyter} (make .venv/.lock, or pass --jupyter)`);
  if (!fs.existsSync(opts.chromium)) throw new Error(`no browser at ${opts.chromium}: apt-get install -y chromium`);
  const shots = path.join(opts.out, 'screenshots');
  fs.rmSync(shots, { recursive: true, force: true });
  fs.mkdirSync(shots, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'memlib-browser-'));
  const t0 = Date.now();
  log(`browser test: ${opts.notebooks.length} notebooks; JupyterLab from ${opts.jupyter}; scratch ${tmp}`);
  const lab = await startLab({ jupyter: opts.jupyter, repo: REPO, dir: tmp });
  log(`JupyterLab up in ${secs(Date.now() - t0)} at ${lab.base}`);
  const blocked = [];
  let context;
  const results = [];
  const cleanup = async () => {
    if (context) await context.close().catch(() => {});
    await lab.stop();
  };
  process.on('SIGINT', () => { cleanup().finally(() => process.exit(130)); });
  try {
    context = await launchBrowser(opts.chromium, path.join(tmp, 'chromium-profile'), blocked);
    for (const nb of opts.notebooks) {
      log(`\n== ${nb}`);
      const r = await testNotebook(context, lab, nb, opts, shots);
      results.push(r);
      log(`  ${r.failures.length ? `FAIL (${r.failures.length})` : 'ok'} in ${r.seconds.toFixed(1)} s`);
      for (const f of r.failures) log(`  FAIL ${nb}: ${f}`);
    }
  } finally {
    await cleanup();
  }
  const total = (Date.now() - t0) / 1000;
  const summary = { total_seconds: total, chromium: opts.chromium, results, blocked_requests: blocked };
  fs.writeFileSync(path.join(opts.out, 'summary.json'), `${JSON.stringify(summary, null, 1)}\n`);

  log('\n== summary');
  log('notebook                        open+save  Run All  total   explorers  failures');
  for (const r of results) {
    log(`${r.notebook.padEnd(32)}${(r.openSeconds ?? 0).toFixed(1).padStart(8)} s${(r.runAllSeconds ?? 0).toFixed(1)
      .padStart(7)} s${r.seconds.toFixed(1).padStart(6)} s${String(r.explorerCount ?? '-').padStart(8)}${
      String(r.failures.length).padStart(11)}`);
  }
  log('\ncontrol change → new numbers / new image decoded, per explorer (ms):');
  for (const r of results) {
    for (const e of r.explorers) {
      log(`  ${path.basename(e.notebook).padEnd(26)} cell ${String(e.cell).padStart(2)}  ${String(e.textMs ?? '-').padStart(6)}`
        + `  ${String(e.imageMs ?? '-').padStart(6)}   ${e.control || ''}`);
    }
  }
  const failures = results.reduce((n, r) => n + r.failures.length, 0) + blocked.length;
  if (blocked.length) log(`\nFAIL: ${blocked.length} request(s) to other hosts were blocked: ${[...new Set(blocked)].slice(0, 5).join(', ')}`);
  log(`\nscreenshots: ${path.relative(REPO, shots)}/  summary: ${path.relative(REPO, path.join(opts.out, 'summary.json'))}`);
  log(`browser test: ${results.length} notebooks, ${results.reduce((n, r) => n + r.explorers.length, 0)} explorers, `
    + `${failures} failure(s), ${total.toFixed(0)} s in all`);
  fs.rmSync(tmp, { recursive: true, force: true });
  process.exitCode = failures ? 1 : 0;
}

main().catch((e) => {
  console.error(`browser test: ${e.stack || e}`);
  process.exit(2);
});
