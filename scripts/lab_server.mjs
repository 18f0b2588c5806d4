// Start and stop a private JupyterLab for the browser test (scripts/browser_test.mjs).
//
// The server listens on 127.0.0.1 only, on a free port, with a random token.  It serves a
// scratch copy of the repository: notebooks/ is copied (so "Run All" and "Save" never touch
// the committed files) and every other top-level entry is a symlink to the checkout (so a
// notebook's relative paths such as ../data/... resolve as in the repository).  Jupyter's
// config, data, runtime, settings and workspace folders are fresh, so nothing from the
// user's own Jupyter setup takes part, and JupyterLab's settings turn off what would reach
// the network (news, update checks) or hide cells (windowed rendering) or rewrite files
// behind the test's back (autosave).
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

const SKIP = new Set(['.git', 'notebooks', 'node_modules', 'build', '.venv']);

// JupyterLab user settings for the test (one file per plugin, JSON)
const SETTINGS = {
  '@jupyterlab/docmanager-extension/plugin.jupyterlab-settings': { autosave: false },
  '@jupyterlab/notebook-extension/tracker.jupyterlab-settings': { windowingMode: 'none' },
  '@jupyterlab/apputils-extension/notification.jupyterlab-settings': { checkForUpdates: false, fetchNews: 'false' },
};

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function scratchCopy(repo, dir) {
  const root = path.join(dir, 'root');
  fs.mkdirSync(root, { recursive: true });
  for (const entry of fs.readdirSync(repo)) {
    if (SKIP.has(entry)) continue;
    fs.symlinkSync(path.join(repo, entry), path.join(root, entry));
  }
  fs.cpSync(path.join(repo, 'notebooks'), path.join(root, 'notebooks'), {
    recursive: true, filter: (src) => !src.includes('.ipynb_checkpoints'),
  });
  return root;
}

async function waitForServer(url, proc, logFile, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) {
      throw new Error(`JupyterLab exited with status ${proc.exitCode}; its log (${logFile}):\n`
        + fs.readFileSync(logFile, 'utf8').slice(-3000));
    }
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`JupyterLab did not answer ${url.replace(/token=\w+/, 'token=…')} within `
    + `${timeoutMs / 1000} s; its log: ${logFile}`);
}

/** Start JupyterLab; returns {base, token, root, dir, log, stop()}. */
export async function startLab({ jupyter, repo, dir, timeoutMs = 180_000 }) {
  const root = scratchCopy(repo, dir);
  const settings = path.join(dir, 'lab-settings');
  for (const [file, value] of Object.entries(SETTINGS)) {
    fs.mkdirSync(path.dirname(path.join(settings, file)), { recursive: true });
    fs.writeFileSync(path.join(settings, file), JSON.stringify(value));
  }
  for (const d of ['config', 'data', 'runtime', 'ipython', 'workspaces']) fs.mkdirSync(path.join(dir, d));
  const port = await freePort();
  const token = crypto.randomBytes(24).toString('hex');
  const env = {
    ...process.env,
    JUPYTER_CONFIG_DIR: path.join(dir, 'config'),
    JUPYTER_DATA_DIR: path.join(dir, 'data'),
    JUPYTER_RUNTIME_DIR: path.join(dir, 'runtime'),
    IPYTHONDIR: path.join(dir, 'ipython'),
    // the kernel imports this checkout's memlib, whatever the venv's editable install points at
    PYTHONPATH: [repo, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter),
  };
  delete env.MPLBACKEND;   // the notebooks choose the inline backend themselves
  const args = ['lab', '--no-browser', '--ServerApp.ip=127.0.0.1', `--ServerApp.port=${port}`,
    '--ServerApp.port_retries=0', `--ServerApp.root_dir=${root}`,
    `--IdentityProvider.token=${token}`, '--LabApp.expose_app_in_browser=True',
    `--LabApp.user_settings_dir=${settings}`, `--LabApp.workspaces_dir=${path.join(dir, 'workspaces')}`,
    '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate', '--LabApp.news_url=',
    '--ServerApp.terminals_enabled=False'];
  if (process.getuid && process.getuid() === 0) args.push('--ServerApp.allow_root=True');
  const log = path.join(dir, 'jupyterlab.log');
  const out = fs.openSync(log, 'w');
  const proc = spawn(jupyter, args, { env, stdio: ['ignore', out, out], detached: true });
  const base = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (proc.exitCode !== null) return;
    try { process.kill(-proc.pid, 'SIGTERM'); } catch { return; }
    for (let i = 0; i < 40 && proc.exitCode === null; i++) await new Promise((r) => setTimeout(r, 250));
    if (proc.exitCode === null) { try { process.kill(-proc.pid, 'SIGKILL'); } catch { /* gone */ } }
  };
  try {
    await waitForServer(`${base}/api/status?token=${token}`, proc, log, timeoutMs);
  } catch (e) {
    await stop();
    throw e;
  }
  return { base, token, root, dir, log, stop };
}
