"""A run removes the temporary files a killed run left in its folder, and nothing else (issue 23).

``files.write_bytes`` writes ``.model.tflite.<8 random characters>.tmp`` and renames
it; ``files.write_dir`` fills ``.00_baseline.<8 random characters>.tmp/``. SIGKILL
between the two leaves them, hidden, and before this no later run removed them.
"""

import logging
import os

from edgecomp import config, files, pipeline

STALE = ["cpu/.model.tflite.k3j2x9q1.tmp", ".report.json.a_b1c2d3.tmp", "reference/.model.tflite.00000000.tmp",
         "checkpoints/.01_prune.zz9y8x7w.tmp/model.h5", "checkpoints/.01_prune.zz9y8x7w.tmp/record.json"]
KEPT = ["cpu/model.tflite", "report.json", "notes.tmp", ".model.tflite.tmp", ".model.tflite.abc.tmp",
        ".model.tflite.ABCDEFGH.tmp", "model.tflite.k3j2x9q1.tmp", ".model.tflite.k3j2x9q1.tmp.bak",
        "checkpoints/00_baseline/model.h5", "logs/00_baseline/events.out.tfevents.1.host"]


def make(run_dir, relatives):
    for relative in relatives:
        path = run_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def listing(run_dir):
    return sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if not path.is_dir())


def test_a_run_removes_a_killed_runs_temporary_files_and_says_so(tmp_path, caplog):
    cfg = config.from_dict({"name": "again", "output_dir": str(tmp_path)})
    make(cfg.run_dir, STALE + KEPT)
    with caplog.at_level(logging.INFO, logger="edgecomp"):
        assert pipeline._prepare_run_dir(cfg) == cfg.run_dir
    assert listing(cfg.run_dir) == sorted(KEPT)
    assert not (cfg.run_dir / "checkpoints" / ".01_prune.zz9y8x7w.tmp").exists()
    line = next(record.getMessage() for record in caplog.records if "temporary file" in record.getMessage())
    assert "removed 4 temporary file(s) or folder(s) an interrupted run left in" in line
    assert "cpu/.model.tflite.k3j2x9q1.tmp" in line and "checkpoints/.01_prune.zz9y8x7w.tmp" in line


def test_only_edgecomps_own_temporary_names_are_removed_and_links_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    make(outside, [".data.npz.k3j2x9q1.tmp"])
    run_dir = tmp_path / "run"
    make(run_dir, KEPT)
    os.symlink(outside, run_dir / "linked")                                    # a linked folder: not entered
    os.symlink(outside / ".data.npz.k3j2x9q1.tmp", run_dir / ".link.k3j2x9q1.tmp")   # a link: not removed
    assert files.remove_stale_temporaries(run_dir) == []
    assert (outside / ".data.npz.k3j2x9q1.tmp").exists() and (run_dir / ".link.k3j2x9q1.tmp").is_symlink()
    assert listing(run_dir) == sorted([*KEPT, ".link.k3j2x9q1.tmp"]) and (run_dir / "linked").is_symlink()


def test_the_names_removed_are_the_names_the_atomic_writes_make(tmp_path, monkeypatch):
    made = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: made.append(os.path.basename(source))
                        or real_replace(source, target))
    files.write_text(tmp_path / "report.json", "{}")
    files.write_dir(tmp_path / "checkpoints" / "00_baseline", {"model.h5": b"x"})
    assert len(made) == 2 and all(files.TEMPORARY_NAME.fullmatch(name) for name in made), made
