"""Dataset loaders (folder, CelebA, LFW, Hugging Face) and their one-line errors, in-process and via the CLI."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fl_sim.core.data import open_dataset, select_users
from fl_sim.core.data.folders import CelebAFaces, FolderFaces, LfwFaces
from fl_sim.core.errors import DataError

FL_SIM = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "fl-sim"


def write_image(path: Path, value: int = 128, size: tuple[int, int] = (24, 24)) -> Path:
    """A solid-colour RGB image; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def make_folder_tree(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
    for user, n in counts.items():
        for i in range(n):
            write_image(root / user / f"{i:03d}{suffix}", value=(40 * i) % 256)
    return root


def assert_one_line_naming(err: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(err.value)
    assert str(path) in msg
    assert "\n" not in msg


# -- folder:PATH ----------------------------------------------------------------------------
def test_folder_users_and_attributes(tmp_path):
    # Prepare
    make_folder_tree(tmp_path, {"bob": 2, "alice": 3, "carol": 1, "dave": 1})
    (tmp_path / "attributes.csv").write_text("user,gender,age\nalice,F,25\nbob,male,50\ncarol,female,30\ndave,,\n")
    (tmp_path / "alice" / "notes.txt").write_text("not an image")

    # Execute
    users = open_dataset(f"folder:{tmp_path}").users()

    # Assert
    assert [(u.user, u.n_photos) for u in users] == [("alice", 3), ("bob", 2), ("carol", 1), ("dave", 1)]
    assert [u.attributes for u in users] == [
        {"gender": "female", "age_band": "<30"},
        {"gender": "male", "age_band": "45+"},
        {"gender": "female", "age_band": "30-44"},
        {"gender": None, "age_band": None},
    ]


def test_folder_attributes_csv_saved_with_bom(tmp_path):
    # Prepare: spreadsheet programs save CSV as UTF-8 with a byte-order mark
    make_folder_tree(tmp_path, {"alice": 1})
    (tmp_path / "attributes.csv").write_text("user,gender,age\nalice,F,25\n", encoding="utf-8-sig")

    # Execute
    (user,) = FolderFaces(str(tmp_path)).users()

    # Assert
    assert user.attributes == {"gender": "female", "age_band": "<30"}


def test_folder_without_attributes_csv_has_unknown_attributes(tmp_path):
    # Prepare
    make_folder_tree(tmp_path, {"alice": 1})

    # Execute
    (user,) = FolderFaces(str(tmp_path)).users()

    # Assert
    assert user.attributes == {"gender": None, "age_band": None}


def test_folder_photos_shape_and_range(tmp_path):
    # Prepare
    write_image(tmp_path / "alice" / "0.png", value=255)
    write_image(tmp_path / "alice" / "1.png", value=0, size=(32, 24))  # not square, another size
    write_image(tmp_path / "alice" / "2.jpg", value=128)

    # Execute
    x = FolderFaces(str(tmp_path)).photos("alice", 16)

    # Assert
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert torch.allclose(x[0], torch.ones_like(x[0]))
    assert torch.allclose(x[1], -torch.ones_like(x[1]))


def test_select_users_splits_and_skips_small_users(tmp_path):
    # Prepare
    make_folder_tree(tmp_path, {"alice": 6, "bob": 2, "carol": 5, "dave": 5})
    ds = FolderFaces(str(tmp_path))

    # Execute
    chosen = select_users(ds, n_users=2, photos_per_user=3, holdout_per_user=2, min_photos=0, size=16)

    # Assert
    assert [u.user for u in chosen] == ["alice", "carol"]
    assert [tuple(u.train.shape) for u in chosen] == [(3, 3, 16, 16)] * 2
    assert [tuple(u.holdout.shape) for u in chosen] == [(2, 3, 16, 16)] * 2
    assert torch.equal(chosen[0].holdout, ds.photos("alice", 16)[3:5])


def test_select_users_honours_min_photos(tmp_path):
    # Prepare
    make_folder_tree(tmp_path, {"alice": 4, "bob": 6})

    # Execute
    chosen = select_users(FolderFaces(str(tmp_path)), n_users=1, photos_per_user=2, holdout_per_user=1,
                          min_photos=5, size=8)

    # Assert
    assert [u.user for u in chosen] == ["bob"]


def test_select_users_too_few_users(tmp_path):
    # Prepare
    make_folder_tree(tmp_path, {"alice": 5, "bob": 1})

    # Execute
    with pytest.raises(DataError) as err:
        select_users(FolderFaces(str(tmp_path)), n_users=2, photos_per_user=3, holdout_per_user=2,
                     min_photos=0, size=16)

    # Assert
    assert_one_line_naming(err, tmp_path)
    assert "'users'" in str(err.value)


def test_missing_path(tmp_path):
    # Prepare
    missing = tmp_path / "nowhere"

    # Execute
    with pytest.raises(DataError) as err:
        open_dataset(f"folder:{missing}")

    # Assert
    assert_one_line_naming(err, missing)


def test_path_is_a_file(tmp_path):
    # Prepare
    f = tmp_path / "file.txt"
    f.write_text("x")

    # Execute
    with pytest.raises(DataError) as err:
        FolderFaces(str(f))

    # Assert
    assert_one_line_naming(err, f)


def test_empty_user_folder(tmp_path):
    # Prepare
    make_folder_tree(tmp_path, {"alice": 2})
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "readme.txt").write_text("no photos here")

    # Execute
    with pytest.raises(DataError) as err:
        FolderFaces(str(tmp_path))

    # Assert
    assert_one_line_naming(err, tmp_path / "bob")


def test_no_user_folders(tmp_path):
    # Execute
    with pytest.raises(DataError) as err:
        FolderFaces(str(tmp_path))

    # Assert
    assert_one_line_naming(err, tmp_path)


@pytest.mark.parametrize("content", [b"this is not a jpeg at all", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"],
                         ids=["garbage", "truncated"])
def test_corrupt_image_raises_when_photos_are_read(tmp_path, content):
    # Prepare
    make_folder_tree(tmp_path, {"alice": 2})
    bad = tmp_path / "alice" / "999.jpg"
    bad.write_bytes(content)
    ds = FolderFaces(str(tmp_path))  # opening only lists files

    # Execute
    with pytest.raises(DataError) as err:
        ds.photos("alice", 16)

    # Assert
    assert_one_line_naming(err, bad)


@pytest.mark.parametrize("csv_text", [
    "name,sex\nalice,F\n",             # no user column
    "user,gender,age\nalice,F\n",      # too few fields
    "user,gender,age\nalice,F,25,x\n",  # too many fields
    "user,gender,age\nalice,robot,25\n",  # gender not female/male
    "user,gender,age\nalice,F,old\n",  # age not years nor a band
], ids=["columns", "short-row", "long-row", "gender", "age"])
def test_malformed_attributes_csv(tmp_path, csv_text):
    # Prepare
    make_folder_tree(tmp_path, {"alice": 1})
    (tmp_path / "attributes.csv").write_text(csv_text)

    # Execute
    with pytest.raises(DataError) as err:
        FolderFaces(str(tmp_path))

    # Assert
    assert_one_line_naming(err, tmp_path / "attributes.csv")


def test_unknown_dataset_kind():
    # Execute / Assert
    with pytest.raises(DataError, match="nosuch"):
        open_dataset("nosuch:/x")


def test_folder_spec_without_path():
    # Execute / Assert
    with pytest.raises(DataError, match="needs a path"):
        open_dataset("folder:")


# -- celeba:PATH ----------------------------------------------------------------------------
ATTR_NAMES = ["Bald", "Male", "Smiling", "Young"]


def make_celeba(root: Path, rows: list[tuple[str, int, int, int]]) -> Path:
    """rows: (image name, identity, male 1/-1, young 1/-1)."""
    for name, *_ in rows:
        write_image(root / "img_align_celeba" / name, value=100, size=(24, 30))
    (root / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for n, i, _, _ in rows))
    lines = [str(len(rows)), " ".join(ATTR_NAMES)]
    lines += [f"{n} -1 {m} 1 {y}" for n, _, m, y in rows]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    return root


CELEBA_ROWS = [("000001.jpg", 12, 1, 1), ("000002.jpg", 7, -1, -1), ("000003.jpg", 12, 1, -1),
               ("000004.jpg", 12, -1, 1), ("000005.jpg", 7, -1, -1)]


def test_celeba_users_grouped_by_identity_with_majority_attributes(tmp_path):
    # Prepare
    make_celeba(tmp_path, CELEBA_ROWS)

    # Execute
    users = open_dataset(f"celeba:{tmp_path}").users()

    # Assert
    assert [(u.user, u.n_photos) for u in users] == [("7", 2), ("12", 3)]
    assert users[0].attributes == {"gender": "female", "age_band": "30-44"}
    assert users[1].attributes == {"gender": "male", "age_band": "<30"}


def test_celeba_photos(tmp_path):
    # Prepare
    ds = CelebAFaces(str(make_celeba(tmp_path, CELEBA_ROWS)))

    # Execute
    x = ds.photos("12", 16)

    # Assert
    assert x.shape == (3, 3, 16, 16)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_celeba_malformed_identity_file(tmp_path):
    # Prepare
    make_celeba(tmp_path, CELEBA_ROWS)
    ident = tmp_path / "identity_CelebA.txt"
    ident.write_text("000001.jpg 12\n000002.jpg seven\n")

    # Execute
    with pytest.raises(DataError) as err:
        CelebAFaces(str(tmp_path))

    # Assert
    assert_one_line_naming(err, ident)
    assert "line 2" in str(err.value)


def test_celeba_malformed_attribute_file(tmp_path):
    # Prepare
    make_celeba(tmp_path, CELEBA_ROWS)
    attrs = tmp_path / "list_attr_celeba.txt"
    attrs.write_text("1\nBald Smiling\n000001.jpg 1 -1\n")

    # Execute
    with pytest.raises(DataError) as err:
        CelebAFaces(str(tmp_path))

    # Assert
    assert_one_line_naming(err, attrs)


def test_celeba_missing_annotation_file(tmp_path):
    # Prepare
    make_celeba(tmp_path, CELEBA_ROWS)
    (tmp_path / "list_attr_celeba.txt").unlink()

    # Execute
    with pytest.raises(DataError) as err:
        CelebAFaces(str(tmp_path))

    # Assert
    assert_one_line_naming(err, tmp_path / "list_attr_celeba.txt")


def test_celeba_listed_image_missing(tmp_path):
    # Prepare
    make_celeba(tmp_path, CELEBA_ROWS)
    gone = tmp_path / "img_align_celeba" / "000005.jpg"
    gone.unlink()
    ds = CelebAFaces(str(tmp_path))

    # Execute
    with pytest.raises(DataError) as err:
        ds.photos("7", 16)

    # Assert
    assert_one_line_naming(err, gone)


# -- lfw:PATH -------------------------------------------------------------------------------
def test_lfw_parent_folder(tmp_path):
    # Prepare
    make_folder_tree(tmp_path / "lfw", {"Ada_Lovelace": 2, "Alan_Turing": 3}, suffix=".jpg")

    # Execute
    ds = open_dataset(f"lfw:{tmp_path}")

    # Assert
    assert isinstance(ds, LfwFaces)
    assert [(u.user, u.n_photos) for u in ds.users()] == [("Ada_Lovelace", 2), ("Alan_Turing", 3)]
    assert ds.photos("Alan_Turing", 16).shape == (3, 3, 16, 16)


def test_lfw_missing_path(tmp_path):
    # Execute
    with pytest.raises(DataError) as err:
        open_dataset(f"lfw:{tmp_path / 'absent'}")

    # Assert
    assert_one_line_naming(err, tmp_path / "absent")


# -- Hugging Face ---------------------------------------------------------------------------
def tiny_hf_dataset(**extra):
    import datasets

    images = [Image.fromarray(np.full((20, 24, 3), v, np.uint8)) for v in (0, 255, 60, 90, 120)]
    ds = datasets.Dataset.from_dict({"image": images, "identity": [3, 3, 7, 7, 7],
                                     "gender": ["female", "female", "male", "male", "male"], **extra})
    if not isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image())
    return ds


def test_hf_users_and_photos():
    # Prepare
    from fl_sim.core.data.hf import HFFaces

    ds = HFFaces(tiny_hf_dataset(age=[25, 25, 50, 50, 50]), "identity")

    # Execute
    users = ds.users()
    x3, x7 = ds.photos("3", 16), ds.photos("7", 16)

    # Assert
    assert [(u.user, u.n_photos) for u in users] == [("3", 2), ("7", 3)]
    assert users[0].attributes == {"gender": "female", "age_band": "<30"}
    assert users[1].attributes == {"gender": "male", "age_band": "45+"}
    assert x3.shape == (2, 3, 16, 16) and x7.shape == (3, 3, 16, 16)
    assert torch.allclose(x3[0], -torch.ones_like(x3[0])) and torch.allclose(x3[1], torch.ones_like(x3[1]))


def test_hf_missing_identity_column():
    # Prepare
    from fl_sim.core.data.hf import HFFaces

    # Execute / Assert
    with pytest.raises(DataError, match="person"):
        HFFaces(tiny_hf_dataset(), "person")


# -- CLI ------------------------------------------------------------------------------------
def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(FL_SIM), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess, path: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0]


def test_cli_data_info_missing_path(tmp_path):
    # Prepare
    missing = tmp_path / "MISSING"

    # Execute
    proc = run_cli("data", "info", f"folder:{missing}", "--json", cwd=tmp_path)

    # Assert
    assert_one_line_error(proc, missing)
    assert proc.stdout == ""


def test_cli_data_info_long_missing_path_stays_one_line(tmp_path):
    # Prepare
    missing = tmp_path / ("a" * 60) / ("b" * 60)

    # Execute
    proc = run_cli("data", "info", f"folder:{missing}", "--json", cwd=tmp_path)

    # Assert
    assert_one_line_error(proc, missing)


@pytest.fixture(scope="module")
def cli_run_missing(tmp_path_factory):
    """`fl-sim run` on a missing folder dataset, run once for the tests below."""
    tmp = tmp_path_factory.mktemp("cli_run")
    missing, runs = tmp / "MISSING", tmp / "runs"
    proc = run_cli("run", "--set", f"data.dataset=folder:{missing}", "--runs-dir", str(runs), cwd=tmp)
    return proc, missing, runs


def test_cli_run_missing_path_exits_2_without_run_folder(cli_run_missing):
    # Prepare
    proc, missing, runs = cli_run_missing

    # Assert
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(missing) in proc.stderr.splitlines()[-1]
    assert not runs.exists() or not any(runs.iterdir())


def test_cli_run_missing_path_stderr_is_one_line(cli_run_missing):
    # Prepare
    proc, missing, _ = cli_run_missing

    # Assert
    assert_one_line_error(proc, missing)
