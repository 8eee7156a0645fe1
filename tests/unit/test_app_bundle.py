"""The folder the runners hand ``flwr run`` bundles the same app as the checkout does."""

import shutil

from flwr.cli.build import build_fab_from_disk
from helpers import REPO

from mefl.runtime.app_bundle import bundle_folder, bundle_sources, candidate_files


def test_the_checkout_and_its_bundle_folder_give_the_same_bundle():
    with bundle_folder(REPO) as folder:
        assert build_fab_from_disk(folder) == build_fab_from_disk(REPO)
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
            bundle_sources(REPO)
        )
    assert not folder.exists()


def test_the_folders_flower_drops_are_not_walked_and_the_bundle_stays_the_same(tmp_path):
    app = tmp_path / "app"
    for name in bundle_sources(REPO):
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, app / name)
    # What Flower drops from a bundle: a venv at the top, bytecode folders, its own .flwr folder;
    # symlinks are never followed. A venv deeper down is walked (Flower drops only the top one).
    for dropped in (".venv/lib/site.py", "mefl_app/__pycache__/cached.py", ".flwr/config.toml"):
        (app / dropped).parent.mkdir(parents=True, exist_ok=True)
        (app / dropped).write_text("x = 1\n")
    (app / "mefl_app" / "linked.py").symlink_to(REPO / "mefl_app" / "task.py")
    (app / "mefl_app" / "linked_dir").symlink_to(REPO / "mefl_app" / "model", target_is_directory=True)
    (app / "tools" / ".venv").mkdir(parents=True)
    (app / "tools" / ".venv" / "deep.py").write_text("x = 2\n")

    walked = candidate_files(app)
    assert not [name for name in walked if name.startswith((".venv/", ".flwr/")) or "__pycache__" in name]
    assert "mefl_app/linked.py" not in walked and not [name for name in walked if "linked_dir" in name]
    assert "tools/.venv/deep.py" in walked
    with bundle_folder(app, parent=tmp_path) as folder:
        assert build_fab_from_disk(folder) == build_fab_from_disk(app)
