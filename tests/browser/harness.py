"""Drive notebooks with widget panels in a real browser: JupyterLab on localhost + headless Chromium (Playwright).

Generic over the notebook: `open_notebook` runs all its cells; a *panel* is a code cell whose first line is
`# browser-panel: {"name": ..., ...}` (JSON, see `panel_spec`; a comment survives `nbdev_clean`, cell tags do not).
Nothing here knows what the panels are.

Isolation: the notebook is copied into a temporary root (JupyterLab never writes into the repository), and the
server gets temporary config, data, runtime, settings and workspace folders, so nothing of the user's is read or
touched. `JupyterLab.stop` shuts the kernels and the server down and kills what is left of its process group.
"""
from __future__ import annotations

import json, os, secrets, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync',
                 '--disable-dev-shm-usage']
# Console errors that are not the panels' fault: (substring, reason). Empty: none has been seen so far; add one
# only with the reason it is harmless.
BENIGN_CONSOLE: list[tuple[str, str]] = []
# Plotly's mode bar and hover label follow the mouse, not the data: hidden so that pixel differences in a figure
# come from a redraw. Clicks still work (plotly finds the clicked point from its own hover data, not the label).
HIDE_MOUSE_FOLLOWERS = '.js-plotly-plot .modebar-container, .js-plotly-plot .hoverlayer { visibility: hidden !important; }'


class BrowserUnavailable(RuntimeError):
    "Chromium or Playwright is missing or cannot start; the message says what to install."


def chromium_path() -> str:
    "Path of the Chromium binary (env EELSNB_CHROMIUM, else Debian's `chromium`); raise BrowserUnavailable if none."
    env = os.environ.get('EELSNB_CHROMIUM')
    cand = env or shutil.which('chromium') or shutil.which('chromium-browser')
    if not cand or not Path(cand).exists():
        where = f'EELSNB_CHROMIUM={env!r} does not exist' if env else 'no `chromium` on PATH'
        raise BrowserUnavailable(
            f"Chromium not found ({where}). Install Debian's package: `apt-get install -y chromium` (.ci/run does "
            "this), or point EELSNB_CHROMIUM at a Chromium binary; not `playwright install`, which downloads its own browser.")
    return cand


def launch_chromium(playwright):
    "Launch headless Chromium through Playwright; raise BrowserUnavailable with the reason if it cannot start."
    path = chromium_path()
    try:
        return playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS, timeout=60_000)
    except Exception as e:  # playwright raises its own Error types; the message is what matters
        raise BrowserUnavailable(f'Playwright could not launch Chromium at {path}: {e}') from e


PANEL_MARK = '# browser-panel:'


def panel_spec(source:str) -> dict|None:
    """The JSON after `# browser-panel:` on the first line of a cell's source, or None if the cell is no panel.
    Keys: name (str, required), slider, click, readout (bool), state (a Python expression, evaluated in the kernel),
    x_range ({axis: [lo, hi]}: the first figure's drawn range must lie within)."""
    first = source.lstrip().split('\n', 1)[0]
    if not first.startswith(PANEL_MARK): return None
    try: spec = json.loads(first[len(PANEL_MARK):])
    except json.JSONDecodeError as e: raise ValueError(f'bad {PANEL_MARK} line {first!r}: {e}') from e
    if not isinstance(spec, dict) or not isinstance(spec.get('name'), str) or not spec['name'].isidentifier():
        raise ValueError(f'{PANEL_MARK} line {first!r}: needs a JSON object with "name" (an identifier)')
    return spec


def notebook_panels(path:Path) -> dict[str, dict]:
    "{name: spec} of the panel cells of the .ipynb at `path`, read from the file (no browser needed)."
    out = {}
    for c in json.loads(Path(path).read_text())['cells']:
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        if c['cell_type'] == 'code' and (spec := panel_spec(src)):
            if spec['name'] in out: raise ValueError(f'{path}: two panels named {spec["name"]!r}')
            out[spec['name']] = spec
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@dataclass
class JupyterLab:
    "A JupyterLab server on 127.0.0.1 serving a temporary copy of `notebook_dir`; use as a context manager."
    notebook_dir: Path                      # folder whose files (notebooks, helpers) are copied into the server's root
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    startup_timeout: float = 90.

    def __post_init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix='eelsnb-browser-'))
        self.root = self.tmp / 'root'
        shutil.copytree(self.notebook_dir, self.root, ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints', '__init__.py', 'harness.py'))
        self.proc = None
        self.log_path = self.tmp / 'jupyter.log'

    @property
    def base_url(self) -> str: return f'http://127.0.0.1:{self.port}'

    def _env(self) -> dict:
        env = dict(os.environ)
        for var, sub in [('JUPYTER_CONFIG_DIR', 'config'), ('JUPYTER_DATA_DIR', 'data'), ('JUPYTER_RUNTIME_DIR', 'runtime'),
                         ('IPYTHONDIR', 'ipython'),
                         ('JUPYTERLAB_SETTINGS_DIR', 'lab-settings'), ('JUPYTERLAB_WORKSPACES_DIR', 'lab-workspaces')]:
            (self.tmp / sub).mkdir(exist_ok=True); env[var] = str(self.tmp / sub)
        env['JUPYTER_PLATFORM_DIRS'] = '1'
        env['JUPYTER_PREFER_ENV_PATH'] = '1'   # kernelspecs and lab extensions of this Python's environment first
        for var in ('JUPYTER_PATH', 'JUPYTER_CONFIG_PATH'): env.pop(var, None)
        # Lab settings: no autosave (the copy is throwaway anyway), no news fetching, no update checks.
        settings = self.tmp / 'lab-settings'
        for plugin, value in [('@jupyterlab/docmanager-extension/plugin', {'autosave': False}),
                              ('@jupyterlab/notebook-extension/tracker', {'windowingMode': 'none'}),  # keep all cells in the DOM
                              ('@jupyterlab/apputils-extension/notification', {'fetchNews': 'false', 'checkForUpdates': False})]:
            p = settings / f'{plugin}.jupyterlab-settings'; p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(value))
        return env

    def start(self) -> 'JupyterLab':
        cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root', '--ip=127.0.0.1', f'--port={self.port}',
               '--port-retries=0', f'--IdentityProvider.token={self.token}', f'--ServerApp.root_dir={self.root}',
               '--LabApp.expose_app_in_browser=True', '--LabApp.news_url=', '--ServerApp.terminals_enabled=False',
               '--LabApp.extension_manager=readonly']
        self._log = open(self.log_path, 'wb')
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=self._env(), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.startup_timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f'jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}')
            try:
                with urllib.request.urlopen(f'{self.base_url}/api/status?token={self.token}', timeout=2) as r:
                    if r.status == 200: return self
            except OSError: time.sleep(0.3)
        raise RuntimeError(f'jupyter lab did not answer within {self.startup_timeout:.0f} s:\n{self.log_tail()}')

    def log_tail(self, n:int=4000) -> str:
        try: return self.log_path.read_bytes()[-n:].decode(errors='replace')
        except OSError: return ''

    def url(self, notebook:str) -> str: return f'{self.base_url}/lab/tree/{notebook}?reset&token={self.token}'

    def _api(self, method:str, path:str):
        req = urllib.request.Request(f'{self.base_url}{path}', method=method,
                                     headers={'Authorization': f'token {self.token}'})
        with urllib.request.urlopen(req, timeout=10) as r: return r.read()

    def _leftovers(self) -> list[int]:
        """PIDs of processes this server started that still run: members of its process group, and kernels, which
        run in sessions of their own but name our runtime folder (their connection file) on their command line."""
        rt, pids = str(self.tmp / 'runtime'), []
        for d in Path('/proc').glob('[0-9]*'):
            try:
                pgrp = int(d.joinpath('stat').read_text().rsplit(')', 1)[1].split()[2])
                if pgrp == self.proc.pid or rt in d.joinpath('cmdline').read_bytes().decode(errors='replace'):
                    pids.append(int(d.name))
            except (OSError, ValueError, IndexError): pass
        return [p for p in pids if p != os.getpid()]

    def stop(self):
        "Shut kernels and server down (REST, then SIGTERM, then SIGKILL to the process group); remove the temp folder."
        if self.proc is None:
            shutil.rmtree(self.tmp, ignore_errors=True); return
        try:
            if self.proc.poll() is None:
                try:
                    for k in json.loads(self._api('GET', '/api/kernels')): self._api('DELETE', f"/api/kernels/{k['id']}")
                except OSError: pass
                try: self._api('POST', '/api/shutdown')
                except OSError: pass
                try: self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                    try: self.proc.wait(10)
                    except subprocess.TimeoutExpired: os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(10)
            for pid in self._leftovers():  # what is left of the server's group, and kernels (in their own sessions)
                try: os.kill(pid, signal.SIGKILL)
                except ProcessLookupError: pass
        finally:
            self._log.close(); self.proc = None
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        try: return self.start()
        except BaseException: self.stop(); raise
    def __exit__(self, *exc): self.stop()


# ---------------------------------------------------------------- in the page (window.jupyterapp)
JS_WAIT_NOTEBOOK = """async (name) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget;
  if (!nb || !nb.context || !nb.context.path.endsWith(name)) return false;
  await nb.context.ready; await nb.sessionContext.ready;
  const k = nb.sessionContext.session && nb.sessionContext.session.kernel;
  return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
}"""

JS_RUN_ALL = """async (timeout_ms) => {
  const app = window.jupyterapp;
  const ok = await app.commands.execute('notebook:run-all-cells');
  const nb = app.shell.currentWidget;
  // wait for the kernel to go idle after the last cell
  for (let t = 0; t < timeout_ms && nb.sessionContext.session.kernel.status !== 'idle'; t += 100) await new Promise(r => setTimeout(r, 100));
  return ok;
}"""

JS_CELLS = """() => {
  // marks each panel cell's node with data-panel="<name>" so that locators can find it
  const nb = window.jupyterapp.shell.currentWidget.content;
  return nb.widgets.map((c, i) => {
    const first = c.model.sharedModel.getSource().trimStart().split('\\n')[0];
    let panel = null;
    if (c.model.type === 'code' && first.startsWith('# browser-panel:')) {
      try { panel = JSON.parse(first.slice(16)).name; } catch (e) { panel = null; }
    }
    if (panel) c.node.setAttribute('data-panel', panel);
    const outputs = c.model.type === 'code' ? c.model.outputs.toJSON() : [];
    return {index: i, type: c.model.type, panel: panel,
            exec_count: c.model.type === 'code' ? c.model.executionCount : null,
            errors: outputs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
            stderr: outputs.filter(o => o.output_type === 'stream' && o.name === 'stderr').map(o => o.text).join('')};
  });
}"""

JS_KERNEL_EVAL = """async (code) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const future = kernel.requestExecute({code: code, silent: false, store_history: false});
  let out = '', err = null;
  future.onIOPub = (msg) => {
    const t = msg.header.msg_type;
    if (t === 'stream') out += msg.content.text;
    else if (t === 'execute_result') out += msg.content.data['text/plain'];
    else if (t === 'error') err = msg.content.ename + ': ' + msg.content.evalue;
  };
  await future.done;
  return {out: out, err: err};
}"""


def open_notebook(page, lab:JupyterLab, notebook:str, timeout:float=120., run_timeout:float=300.) -> list[dict]:
    """Open `notebook` (relative to the server root), run all cells (waiting up to `run_timeout` s for the kernel to go
    idle: the panel cells train small ensembles, slow on a busy machine), return the cells' summaries (see JS_CELLS)."""
    page.goto(lab.url(notebook), wait_until='domcontentloaded', timeout=timeout * 1000)
    page.wait_for_function('() => window.jupyterapp && window.jupyterapp.started !== undefined', timeout=timeout * 1000)
    t0 = time.monotonic()
    while not page.evaluate(JS_WAIT_NOTEBOOK, Path(notebook).name):
        if time.monotonic() - t0 > timeout: raise TimeoutError(f'{notebook}: no idle kernel after {timeout:.0f} s')
        time.sleep(0.25)
    page.add_style_tag(content=HIDE_MOUSE_FOLLOWERS)
    page.evaluate(JS_RUN_ALL, run_timeout * 1000)
    return page.evaluate(JS_CELLS)


def kernel_eval(page, code:str) -> str:
    "Run `code` in the notebook's kernel (not as a cell); return what it printed/returned; raise on a Python error."
    r = page.evaluate(JS_KERNEL_EVAL, code)
    if r['err']: raise RuntimeError(f'kernel error evaluating {code!r}: {r["err"]}')
    return r['out'].strip()


def panel(page, name:str):
    "Locator of the output area of the panel cell `name` (call after `open_notebook`)."
    return page.locator(f'[data-panel="{name}"] .jp-OutputArea')


def wait_rendered(page, name:str, n_plots:int|None=None, timeout:float=60.) -> int:
    """Wait until the panel's widgets are on screen: at least one (or `n_plots`) `.js-plotly-plot` with an SVG main
    layer drawn, and no 'Loading widget'/'Error displaying widget' placeholder. Return the number of plots."""
    out = panel(page, name)
    t0, last = time.monotonic(), ''
    while time.monotonic() - t0 < timeout:
        state = out.evaluate("""(el) => ({
            plots: el.querySelectorAll('.js-plotly-plot').length,
            drawn: [...el.querySelectorAll('.js-plotly-plot')].filter(
                p => p.querySelector('.main-svg .cartesianlayer .subplot') && p.querySelector('.hm, .trace')).length,
            text: el.innerText})""")
        if 'Error displaying widget' in state['text'] or 'Error rendering' in state['text']:
            raise RuntimeError(f'panel {name}: a widget failed to render: {state["text"][:500]}')
        ready = state['plots'] > 0 and state['drawn'] >= state['plots'] and 'Loading widget' not in state['text']
        if ready and (n_plots is None or state['plots'] >= n_plots): return state['plots']
        last = state; time.sleep(0.25)
    raise TimeoutError(f'panel {name}: plots not rendered after {timeout:.0f} s (last: {last})')


def panel_shot(page, name:str, path:Path) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Screenshot the panel's output area to `path` (PNG). Return the image (h, w, 3) uint8 and the boxes
    (x0, y0, x1, y1) of its plotly figures in that image's pixels, so that changes can be measured where the figures are."""
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    loc = panel(page, name)
    loc.scroll_into_view_if_needed()
    loc.screenshot(path=str(path), animations='disabled')
    img = np.asarray(Image.open(path).convert('RGB'))
    box = loc.bounding_box()
    sx, sy = img.shape[1] / box['width'], img.shape[0] / box['height']
    boxes = []
    for b in loc.locator('.js-plotly-plot').evaluate_all('els => els.map(e => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })'):
        x0, y0 = round((b[0] - box['x']) * sx), round((b[1] - box['y']) * sy)
        boxes.append((max(x0, 0), max(y0, 0), min(x0 + round(b[2] * sx), img.shape[1]), min(y0 + round(b[3] * sy), img.shape[0])))
    return img, boxes


def plot_changes(a:np.ndarray, b:np.ndarray, boxes) -> list[float]:
    "Fraction of pixels that differ between screenshots `a` and `b`, inside each figure box (1.0 if sizes differ)."
    if a.shape != b.shape: return [1.0] * len(boxes)
    diff = np.any(a != b, axis=-1)
    return [float(diff[y0:y1, x0:x1].mean()) if x1 > x0 and y1 > y0 else 0.0 for x0, y0, x1, y1 in boxes]


def save_diff(a:np.ndarray, b:np.ndarray, path:Path):
    "Write `b` dimmed with the pixels that differ from `a` in magenta, for a person to look at."
    from PIL import Image
    if a.shape != b.shape: return
    out = (b * 0.35 + 160).astype(np.uint8)
    out[np.any(a != b, axis=-1)] = (255, 0, 255)
    Image.fromarray(out).save(path)


def wait_for_plot_change(page, name:str, before:np.ndarray, path:Path, timeout:float=20., settle:float=0.3):
    """Poll screenshots of the panel until a figure box differs from `before` and the frames stop changing
    (the redraw has finished); the last frame is left at `path`. Return (image, boxes, changed fraction per figure);
    all zeros means no figure changed within `timeout`."""
    t0 = time.monotonic()
    img, boxes = panel_shot(page, name, path)
    while time.monotonic() - t0 < timeout:
        if max(plot_changes(before, img, boxes), default=0) > 0:
            while time.monotonic() - t0 < timeout:  # settle: two equal frames in a row
                time.sleep(settle)
                nxt, boxes = panel_shot(page, name, path)
                if max(plot_changes(img, nxt, boxes), default=0) == 0: break
                img = nxt
            return img, boxes, plot_changes(before, img, boxes)
        time.sleep(0.2)
        img, boxes = panel_shot(page, name, path)
    return img, boxes, plot_changes(before, img, boxes)


def figure_data(page, name:str) -> list[int]:
    "A hash of each figure's traces (plotly's `gd.data`: x, y, z) in the panel, to see that the data, not only pixels, changed."
    return panel(page, name).locator('.js-plotly-plot').evaluate_all("""els => els.map(el => {
        const s = JSON.stringify((el.data || []).map(t => [t.x, t.y, t.z]));
        let h = 0; for (let i = 0; i < s.length; i++) h = (Math.imul(h, 31) + s.charCodeAt(i)) | 0;
        return h; })""")


def lost_x(page, name:str) -> list[tuple[int, int]]:
    """(figure, trace) of the panel's line traces whose `y` holds points but whose `x` plotly.js does not have:
    drawn over their indices. (A FigureWidget batch update once reset `x` of the traces it did not give an `x`.)"""
    return [tuple(v) for v in panel(page, name).locator('.js-plotly-plot').evaluate_all("""els => els.flatMap((el, i) =>
        (el.data || []).map((t, j) => [i, j, t]).filter(([i, j, t]) => (t.type === undefined || t.type === 'scatter')
            && t.y && t.y.length > 1 && (t.x === undefined || t.x === null)).map(([i, j]) => [i, j]))""")]


def axis_range(page, name:str, axis:str='xaxis', plot:int=0) -> list[float]:
    "The range plotly.js drew on `axis` of the panel's figure number `plot`."
    return panel(page, name).locator('.js-plotly-plot').nth(plot).evaluate('(el, a) => el._fullLayout[a] && el._fullLayout[a].range', axis)


def wait_data_change(page, name:str, before:list[int], since:float, timeout:float=10.) -> float|None:
    "Seconds from `since` (time.monotonic()) until the panel's figure data differ from `before`; None if they never do."
    while time.monotonic() - since < timeout:
        if figure_data(page, name) != before: return time.monotonic() - since
        time.sleep(0.02)
    return None


def panel_texts(page, name:str) -> list[str]:
    "Texts of the panel's Label and HTML widgets."
    return panel(page, name).locator('.widget-label, .widget-html-content').all_inner_texts()


def move_slider(page, name:str, presses:int=3) -> tuple[str, str]:
    "Focus the first slider handle of the panel and press ArrowRight `presses` times; return its readout before/after."
    root = panel(page, name)
    if root.locator('.widget-slider .noUi-handle').count() == 0: raise LookupError(f'panel {name}: no slider found')
    handle, readout = root.locator('.widget-slider .noUi-handle').first, root.locator('.widget-slider .widget-readout').first
    before = readout.inner_text()
    handle.focus()
    for _ in range(presses): page.keyboard.press('ArrowRight')
    return before, readout.inner_text()


LAST_CLICK: dict = {}   # what the last click_heatmap found: hover obtained, where it clicked (for failure messages)


def click_heatmap(page, name:str, fx:float=0.7, fy:float=0.3, hover_timeout:float=5.) -> tuple[float, float, float]:
    """Click inside the plot area of the panel's first heatmap at fractions (fx, fy) of its width/height from the
    top left; return the page coordinates clicked and the time of the click (time.monotonic()). Plotly turns a click
    into a point only if it has hovered that point first, so the mouse moves there and waits (up to `hover_timeout`)
    until plotly holds hover data."""
    plot = panel(page, name).locator('.js-plotly-plot', has=page.locator('.heatmaplayer .hm')).first
    if plot.count() == 0: raise LookupError(f'panel {name}: no heatmap found')
    plot.scroll_into_view_if_needed()
    box = plot.locator('.nsewdrag').first.bounding_box()
    if box is None: raise RuntimeError(f'panel {name}: heatmap plot area not visible')
    # plotly gives no hover (so no click) on an empty cell (NaN: a pixel without a valid fit): if the requested point
    # is one, the next candidate away from the centre (where the panels' current pixel sits) is tried
    candidates = [(fx, fy), (0.3, 0.3), (0.7, 0.7), (0.3, 0.7), (0.8, 0.5), (0.2, 0.5), (0.5, 0.2), (0.5, 0.8)]
    for i, (cx, cy) in enumerate(candidates):
        x, y = box['x'] + cx * box['width'], box['y'] + cy * box['height']
        page.mouse.move(x - 5, y - 5); page.mouse.move(x, y, steps=3)
        t0, wait = time.monotonic(), hover_timeout if i == 0 else 1.5
        while not (hovered := plot.evaluate('el => !!(el._hoverdata && el._hoverdata.length)')) and time.monotonic() - t0 < wait:
            time.sleep(0.05)
        if hovered: break
    LAST_CLICK.update(hovered=bool(hovered), candidate=(cx, cy), tried=i + 1)
    page.mouse.click(x, y)
    t_click = time.monotonic()
    time.sleep(0.3)
    after = plot.locator('.nsewdrag').first.bounding_box()
    LAST_CLICK.update(moved=None if after is None else (round(after['x'] - box['x'], 1), round(after['y'] - box['y'], 1)))
    page.mouse.move(2, 2)  # leave the plot so that nothing follows the mouse in the screenshots
    return x, y, t_click


def is_benign(text:str) -> bool: return any(p in text for p, _ in BENIGN_CONSOLE)
