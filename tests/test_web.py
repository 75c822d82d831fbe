"""fl-sim serve: the pages in a real headless Chromium, live progress, and what the server refuses to do."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fl_sim.core.store import RunStore
from tests.browser import CHROMIUM, chromium, served, stop
from tests.conftest import FL_SIM, make_face_folder

TINY = ["data.image_size=16", "data.photos_per_user=4", "data.holdout_per_user=2", "model.width=4"]


def _need_browser() -> None:
    """Where Chromium is missing, the browser tests skip, except in CI (make test installs it there)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}: make test installs Debian's chromium")
        pytest.skip(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium as root)")


def _digest(run_dir: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of the store's data: the database and its WAL. (Its ``-shm`` is SQLite's shared-memory
    WAL index, which every reader, read-only too, maps to take its read mark: not data.)"""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in (run_dir / "store.sqlite", run_dir / "store.sqlite-wal") if p.exists()}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real federation (`fl-sim run`, attacks every 4th round, DP-SGD for one user), started here and left running
    for the live test; ``finished()`` waits for it. Beside it a corrupt and a half-written store, a link out of the
    runs folder, and a secret file outside it that nothing may serve."""
    root = tmp_path_factory.mktemp("web")
    data = make_face_folder(root / "faces", users=3, photos=6)
    runs = root / "runs"
    runs.mkdir()
    sets = [f"data.dataset=folder:{data}", "users=3", f"rounds={ROUNDS}", "attack.enabled=true", "attack.every=4",
            "attack.methods=ig,dlg", "attack.iterations=2", "defenses.dp_sgd.noise_multiplier=1",
            "defenses.dp_sgd.users=sample:1", *TINY]
    proc = subprocess.Popen([str(FL_SIM), "run", "--runs-dir", str(runs), *[a for s in sets for a in ("--set", s)]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    fed = Site(root, runs, proc)
    try:
        yield fed
    finally:
        stop(proc, signal.SIGINT, 60)  # Ctrl-C, as a user would: the run stops its own Ray


ROUNDS = 16


@pytest.fixture(scope="module")
def site(federation: "Site") -> dict[str, Any]:
    """The module's federation, finished."""
    return federation.finished()


class Site:
    """The module's runs folder; ``finished()`` waits for its federation and reads what it recorded."""

    def __init__(self, root: Path, runs: Path, proc: subprocess.Popen[bytes]) -> None:
        self.root, self.runs, self.proc = root, runs, proc
        self._done: dict[str, Any] | None = None

    def finished(self) -> dict[str, Any]:
        if self._done is None:
            _, stderr = self.proc.communicate(timeout=300)
            assert self.proc.returncode == 0, stderr.decode()[-2000:]
            run_dir = next(d for d in self.runs.iterdir() if (d / "store.sqlite").is_file())
            (self.runs / "broken-run").mkdir()
            (self.runs / "broken-run" / "store.sqlite").write_bytes(b"this is not a database" * 100)
            (self.runs / "half-run").mkdir()
            whole = (run_dir / "store.sqlite").read_bytes()
            (self.runs / "half-run" / "store.sqlite").write_bytes(whole[: len(whole) // 3])
            (self.root / "secret.txt").write_text("TOP-SECRET-MARKER\n")
            (self.runs / "escape").symlink_to(self.root, target_is_directory=True)  # a link out: never followed
            st = RunStore(run_dir / "store.sqlite", readonly=True)
            assert st.run()["status"] == "finished"
            self._done = {"runs": self.runs, "run": run_dir.name, "run_dir": run_dir, "attacks": st.attacks(),
                          "users": st.users()}
            st.close()
        return self._done


def test_a_running_run_page_updates_its_progress_without_a_reload(federation: Site) -> None:
    site = federation
    _need_browser()
    with served(site.runs) as base, chromium() as page:
        deadline = time.time() + 120
        run_id = None
        while run_id is None and time.time() < deadline:  # until the run has recorded its first round
            idx = json.loads(urllib.request.urlopen(base + "/api/runs").read())
            ok = [r for r in idx["runs"] if r["status"] == "running" and r["progress"]["rounds_done"] >= 1]
            run_id = ok[0]["id"] if ok else None
            time.sleep(0.2)
        assert run_id, "the run never started"
        page.goto(f"{base}/runs/{run_id}")
        first = page.locator("#progress-text").inner_text()
        assert page.locator(".live-dot").count() == 1
        page.evaluate("window.__sameDocument = 42")  # gone if the page reloads
        page.wait_for_function("t => document.getElementById('progress-text').textContent !== t", arg=first,
                               timeout=60_000)
        later = page.locator("#progress-text").inner_text()
        assert int(later.split()[1]) > int(first.split()[1]), (first, later)
        # ...and on to the end: the finished run's last round and attacks, still without a reload
        page.wait_for_function(f"() => document.getElementById('progress-text').textContent.startsWith("
                               f"'round {ROUNDS} of {ROUNDS}') && !document.querySelector('.live-dot')",
                               timeout=180_000)
        assert page.evaluate("window.__sameDocument") == 42
    site.finished()


def test_browse_the_run_grid_user_photos_reconstructions_and_compare(site: dict[str, Any]) -> None:
    _need_browser()
    before = _digest(site["run_dir"])
    attacked = {(a["user"], a["round"]) for a in site["attacks"]}
    with served(site["runs"]) as base, chromium() as page:
        # The runs page lists the run; a corrupt and a half-written store say so, and the good run still renders
        page.goto(base + "/")
        row = page.locator(f'tr[data-run="{site["run"]}"]')
        assert "finished" in row.inner_text()
        assert "unreadable" in page.locator('tr[data-run="broken-run"]').inner_text()
        assert "unreadable" in page.locator('tr[data-run="half-run"]').inner_text()
        row.locator(f'a[href="/runs/{site["run"]}"]').click()
        page.wait_for_url(f"**/runs/{site['run']}")
        # One grid cell per attacked user and round, each with a similarity
        cells = page.locator("#grid td.cell:not(.empty)")
        assert cells.count() == len(attacked)
        assert page.locator("#grid thead th").count() == 1 + len({r for _, r in attacked})
        sims = [cells.nth(i).get_attribute("data-sim") for i in range(cells.count())]
        finished = {(a["user"], a["round"]) for a in site["attacks"] if a["status"] == "finished"}
        assert sum(bool(s) for s in sims) == len(finished) and all(-1 <= float(s) <= 1 for s in sims if s)
        # Epsilon shows for the DP-SGD user; the context marks arrive on the legend
        assert "ε" in page.locator("table.users").inner_text()
        page.wait_for_selector("#mark-within:not([hidden])", timeout=60_000)
        # Click a user: their photos, then every reconstruction, all loaded
        user = sorted(u for u, _ in attacked)[0]
        page.locator(f'#grid a[href="/runs/{site["run"]}/users/{user}"]').first.click()
        page.wait_for_url(f"**/users/{user}")
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all(".photos img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
        n_train = next(u["n_train"] for u in site["users"] if u["user"] == user)
        assert len(widths) == min(n_train, 16) and all(w > 0 for w in widths), widths
        mine = [a for a in site["attacks"] if a["user"] == user and a["image"]]
        recs = page.eval_on_selector_all(".rec img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
        assert len(recs) == len(mine) and all(w > 0 for w in recs), recs
        text = page.locator("main").inner_text()
        assert all(f"Round {a['round']}" in text for a in mine)
        assert "inferred" in text and "true" in text
        # Follow the link to the compare page: the run is a column there
        page.get_by_role("link", name="Compare this run with others").click()
        page.wait_for_url("**/compare?run=*")
        assert site["run"] in page.locator("table.compare thead").inner_text()
        assert page.locator("svg.chart").count() >= 1
    assert _digest(site["run_dir"]) == before  # browsing wrote nothing


def _raw(base: str, method: str, path: str) -> tuple[int, bytes]:
    """One request with the path sent exactly as written (no client-side normalisation)."""
    host, port = base.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
        c.endheaders()
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# Every URL parameter (run id, user, attack id, photo index, folder, figure, static name, query) given '..',
# absolute paths, separators, encoded and double-encoded variants, and backslashes.
EVIL = ["..", "../..", "..%2f..%2f..%2fetc%2fpasswd", "%2e%2e", "%2e%2e%2f%2e%2e", "..%252f..%252fsecret.txt",
        "%2fetc%2fpasswd", "..\\..\\secret.txt", "..%5c..%5csecret.txt", "escape", "escape%2fsecret.txt", ".", "%00"]


def _evil_paths(run: str, user: str) -> list[str]:
    out = ["/../../../../etc/passwd", "/static/../../pyproject.toml", "/static/..%2f..%2fpyproject.toml",
           "//etc/passwd", f"/runs/{run}/../../secret.txt", f"/runs/{run}/attacks/../store.sqlite"]
    for e in EVIL:
        out += [f"/runs/{e}", f"/api/runs/{e}", f"/runs/{e}/users/{user}", f"/runs/{run}/users/{e}",
                f"/api/runs/{run}/users/{e}", f"/runs/{run}/attacks/{e}.png", f"/runs/{run}/users/{user}/photos/{e}.png",
                f"/runs/{e}/figures/sweep.png", f"/runs/{run}/figures/{e}", f"/static/{e}", f"/compare?run={e}",
                f"/api/compare?folder={e}", f"/api/compare?run={run}&run={e}", f"/runs/{e}/live",
                f"/api/runs/{e}/progress", f"/api/runs/{e}/context"]
    return out


def test_no_url_parameter_leaves_the_runs_folder(site: dict[str, Any]) -> None:
    user = site["users"][0]["user"]
    markers = (b"root:x:", b"[project]", b"SQLite format", b"TOP-SECRET-MARKER", b"this is not a database")
    with served(site["runs"]) as base:
        for path in _evil_paths(site["run"], user):
            status, body = _raw(base, "GET", path)
            assert status in (400, 404), (path, status)
            assert not any(m in body for m in markers), path
        # ...while the same routes serve what they should
        assert _raw(base, "GET", f"/runs/{site['run']}/users/{user}/photos/0.png")[1][:4] == b"\x89PNG"
        first = next(a for a in site["attacks"] if a["image"])
        assert _raw(base, "GET", f"/runs/{site['run']}/attacks/{first['id']}.png")[1][:4] == b"\x89PNG"
        assert _raw(base, "GET", f"/runs/{site['run']}/attacks/999999.png")[0] == 404


def test_writes_are_refused_and_the_store_is_unchanged(site: dict[str, Any]) -> None:
    before = _digest(site["run_dir"])
    user = site["users"][0]["user"]
    with served(site["runs"]) as base:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for path in ("/", "/api/runs", f"/api/runs/{site['run']}", f"/runs/{site['run']}/users/{user}",
                         "/static/app.js", "/nowhere"):
                status, _ = _raw(base, method, path)
                assert status == 405, (method, path, status)
        assert _raw(base, "GET", f"/api/runs/{site['run']}")[0] == 200
    assert _digest(site["run_dir"]) == before


def test_json_twins_and_a_broken_store_only_breaks_its_own_page(site: dict[str, Any]) -> None:
    run = site["run"]
    user = site["users"][0]["user"]
    with served(site["runs"]) as base:
        runs = json.loads(_raw(base, "GET", "/api/runs")[1])["runs"]
        by_id = {r["id"]: r for r in runs}
        assert by_id[run]["status"] == "finished" and by_id["broken-run"]["status"] == "unreadable"
        assert "broken-run" in by_id["broken-run"]["error"] or "store" in by_id["broken-run"]["error"]
        doc = json.loads(_raw(base, "GET", f"/api/runs/{run}")[1])
        cells = [c for row in doc["grid"]["rows"] for c in row["cells"] if c]
        assert len(cells) == len({(a["user"], a["round"]) for a in site["attacks"]})
        assert doc["dp"] and sum(u["epsilon"] is not None for u in doc["users"]) == 1
        assert json.loads(_raw(base, "GET", f"/api/runs/{run}/users/{user}")[1])["user"] == user
        status, body = _raw(base, "GET", "/runs/broken-run")
        assert status == 500 and b"cannot be read" in body and b"store.sqlite" in body
        assert _raw(base, "GET", "/runs/half-run")[0] == 500
        assert _raw(base, "GET", f"/runs/{run}")[0] == 200
        cmp = json.loads(_raw(base, "GET", f"/api/compare?run={run}")[1])
        assert cmp["runs"][0]["id"] == run and cmp["runs"][0]["accuracy"] is not None


def test_serve_binds_the_loopback_and_bad_options_are_one_line(site: dict[str, Any], tmp_path: Path) -> None:
    with served(site["runs"]) as base:
        port = int(base.rsplit(":", 1)[1])
        listening = [ln.split()[1] for ln in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if ln.split()[3] == "0A"]  # state LISTEN
        assert f"0100007F:{port:04X}" in listening
        # the same port again: taken
        r = subprocess.run([str(FL_SIM), "serve", "--runs-dir", str(site["runs"]), "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "in use" in r.stderr and "Traceback" not in r.stderr
    for extra, needle in ((["--port", "70000"], "--port"), (["--runs-dir", str(tmp_path / "none")], "--runs-dir"),
                          (["--host", "no-such-host.invalid"], "--host")):
        args = [str(FL_SIM), "serve", "--runs-dir", str(site["runs"]), *extra]
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_exposed_hosts_are_warned_about() -> None:
    from fl_sim.cli.serve import exposed

    assert not exposed("127.0.0.1") and not exposed("::1") and not exposed("localhost") and not exposed("127.0.0.2")
    assert exposed("0.0.0.0") and exposed("192.168.1.10") and exposed("::")


def test_colour_scale_ends_and_folder_gate(tmp_path: Path) -> None:
    from fl_sim.web.charts import SIM_HI, SIM_LO, sim_colour
    from fl_sim.web.views import NotFound, folder

    assert sim_colour(SIM_LO)[0] == "#f7f7f7" and sim_colour(SIM_LO - 1)[0] == "#f7f7f7"
    assert sim_colour(SIM_HI)[0] == "#67001f" and sim_colour(SIM_HI + 1)[0] == "#67001f"
    assert sim_colour(None)[0] == sim_colour(float("nan"))[0] != sim_colour(SIM_LO)[0]
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "file").write_text("x")
    assert folder(tmp_path, "a") == tmp_path / "a"
    for bad in ("..", "../x", "/etc", "a/..", "a/b", ".hidden", "file", "missing", "", "x" * 200):
        with pytest.raises(NotFound):
            folder(tmp_path, bad)


def test_bench_web_times_every_page_over_http() -> None:
    r = subprocess.run([str(FL_SIM), "bench", "web", "--users", "3", "--rounds", "2", "--repeats", "1", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["attacks"] == 3 * 2 * 2 and {row["page"] for row in doc["rows"]} >= {"run page", "user page"}
    assert all(row["median_s"] > 0 and row["bytes"] > 0 for row in doc["rows"] if row["page"] != "progress JSON")
    bad = subprocess.run([str(FL_SIM), "bench", "web", "--methods", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--methods" in bad.stderr and "Traceback" not in bad.stderr


def test_a_sweep_or_audit_folder_compares_its_runs_and_shows_its_figures(site: dict[str, Any]) -> None:
    sweep = site["runs"] / "sweep-test"
    sweep.mkdir(exist_ok=True)
    (sweep / "sweep.json").write_text(json.dumps({"param": "defenses.dp_sgd.noise_multiplier", "rows": [
        {"param": "defenses.dp_sgd.noise_multiplier", "value": 1.0, "run_id": site["run"]},
        {"param": "defenses.dp_sgd.noise_multiplier", "value": 2.0, "run_id": "gone-run"}]}))
    png = next(p for p in (site["run_dir"] / "attacks").glob("*.png"))
    for name in ("sweep.png", "audit_plot.png"):
        (sweep / name).write_bytes(png.read_bytes())
    with served(site["runs"]) as base:
        assert any(f["id"] == "sweep-test" for f in json.loads(_raw(base, "GET", "/api/runs")[1])["folders"])
        doc = json.loads(_raw(base, "GET", "/api/compare?folder=sweep-test")[1])
        assert [r["id"] for r in doc["runs"]] == [site["run"]] and doc["missing"] == ["gone-run"]
        assert doc["runs"][0]["sweep_value"] == 1.0 and doc["folder"]["figures"] == ["sweep.png", "audit_plot.png"]
        status, body = _raw(base, "GET", "/compare?folder=sweep-test")
        assert status == 200 and b"/runs/sweep-test/figures/audit_plot.png" in body and b"gone-run" in body
        assert _raw(base, "GET", "/runs/sweep-test/figures/audit_plot.png")[1][:4] == b"\x89PNG"
        assert _raw(base, "GET", "/runs/sweep-test/figures/sweep.json")[0] == 404  # only the fixed figure names
        assert _raw(base, "GET", "/api/compare?run=nope")[0] == 404
