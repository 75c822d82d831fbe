"""What the scale bench stands on: the split identities, the process-tree memory, the big store it reads."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from fl_sim.core.data import open_dataset
from fl_sim.core.store import RunStore
from tests.conftest import FL_SIM


def test_split_identities_are_disjoint_slices_of_one_person() -> None:
    whole = open_dataset("synthfaces")
    split = open_dataset("synthfaces-split:10")
    users = split.users()
    assert len(users) == 10 * len(whole.users()) and len({u.user for u in users}) == len(users)
    base = whole.photos_uint8("u0003")
    parts = [split.photos_uint8(f"u0003-{k}") for k in range(10)]
    assert all(len(p) == len(base) // 10 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), base[: 10 * (len(base) // 10)])
    assert next(u for u in users if u.user == "u0003-7").attributes == whole.users()[3].attributes


def test_tree_memory_counts_children_and_pss_is_at_most_rss() -> None:
    from fl_sim.experiments.scale_bench import tree_memory

    alone_rss, alone_pss = tree_memory(os.getpid())
    assert 0 < alone_pss <= alone_rss
    # A child holding 200 MB of its own: the tree grows by about that much
    child = subprocess.Popen(["python3", "-c", "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * "
                              "len(b[::4096]); print('ok', flush=True); time.sleep(30)"], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ok"
        rss, pss = tree_memory(os.getpid())
        assert rss - alone_rss > 190 * 2**20 and pss - alone_pss > 190 * 2**20
    finally:
        child.kill()
        child.wait()


def test_the_big_store_has_its_rows_and_reads_with_the_cli(tmp_path: Path) -> None:
    from fl_sim.experiments.scale_bench import write_big_store

    n = write_big_store(tmp_path / "runs" / "big", users=50, rounds=4, attacked=3)
    st = RunStore(tmp_path / "runs" / "big" / "store.sqlite", readonly=True)
    assert n == 200 and len(st.updates()) == 200 and st.counts() == {"rounds": 4, "attacks": {"finished": 12}}
    st.close()
    r = subprocess.run([str(FL_SIM), "inspect", "big", "--runs-dir", str(tmp_path / "runs"), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and '"attacks"' in r.stdout, r.stderr


def test_bench_scale_refuses_more_users_than_there_are() -> None:
    r = subprocess.run([str(FL_SIM), "bench", "scale", "--users", "10,2000"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--users" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_inspect_table_of_a_big_run_is_bounded_and_says_what_it_left_out(tmp_path: Path) -> None:
    from fl_sim.experiments.reports import TABLE_ROWS, inspect_report
    from fl_sim.experiments.scale_bench import write_big_store

    write_big_store(tmp_path / "runs" / "big", users=30, rounds=10, attacked=25)  # 250 attacks
    doc, shown = inspect_report(tmp_path / "runs" / "big")
    assert len(doc["attacks"]) == 250 and shown[0].row_count == TABLE_ROWS  # the document keeps every row
    assert "50 more attack rows of 250" in str(shown[1])
    _, every = inspect_report(tmp_path / "runs" / "big", limit=None)
    assert every[0].row_count == 250 and not any("more attack rows" in str(s) for s in every)
    one, shown = inspect_report(tmp_path / "runs" / "big", rnd=3)
    assert {r["round"] for r in one["attacks"]} == {3} and shown[0].row_count == 25
    assert [e["round"] for e in one["summary"]] == [3]
